"""What a run prints: one line per epoch, and a final table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def epoch_line(record: dict[str, Any], epochs: int, improved: bool) -> str:
    """``epoch  3/30  train loss 0.612 acc 66.1%  val loss 0.640 acc 63.8% bal 63.5%  lr 0.0195  4.2s *``

    ``lr`` is the learning rate of the epoch's last step. Without a validation split the val part
    reads ``no val split``.
    """
    width = len(str(epochs))
    if math.isnan(record["val_loss"]):
        val = "no val split"
    else:
        val = (
            f"val loss {record['val_loss']:.4f} acc {100 * record['val_accuracy']:5.1f}% "
            f"bal {100 * record['val_balanced_accuracy']:5.1f}%"
        )
    return (
        f"epoch {record['epoch']:>{width}}/{epochs}  "
        f"train loss {record['train_loss']:.4f} acc {100 * record['train_accuracy']:5.1f}%  {val}  "
        f"lr {record['lr']:.3g}  {record['seconds']:.1f}s" + ("  *best" if improved else "")
    )


def metrics_table(
    accuracy: float, balanced: float, per_class: dict[str, float], confusion: list[list[int]], title: str
) -> str:
    """Accuracy, balanced accuracy, per-class accuracy and the confusion matrix as text."""
    classes = list(per_class)
    corner = "true \\ predicted"
    name_width = max(len(corner), *(len(c) for c in classes))
    col = max(6, *(len(c) for c in classes))
    lines = [
        title,
        f"  accuracy           {100 * accuracy:6.2f} %",
        f"  balanced accuracy  {100 * balanced:6.2f} %  (mean per-class recall)",
        "",
        f"  {'class':<{name_width}}  accuracy",
    ]
    for name, acc in per_class.items():
        shown = "   n/a" if acc is None or math.isnan(acc) else f"{100 * acc:6.2f} %"
        lines.append(f"  {name:<{name_width}}  {shown}")
    lines += ["", "  " + f"{corner:<{name_width}}" + "".join(f"  {c:>{col}}" for c in classes)]
    for name, row in zip(classes, confusion):
        lines.append("  " + f"{name:<{name_width}}" + "".join(f"  {n:>{col}}" for n in row))
    return "\n".join(lines)


def final_report(metrics: dict[str, Any], classes: list[str], run_dir: Path) -> str:
    """The table printed at the end of training, with where to look next."""
    if metrics["best_val_balanced_accuracy"] is None:  # no validation split: the last epoch is kept
        title = f"test split, last checkpoint (epoch {metrics['best_epoch']}; no validation split to choose by)"
    else:
        title = (
            f"test split, best checkpoint (epoch {metrics['best_epoch']}, "
            f"val balanced accuracy {100 * metrics['best_val_balanced_accuracy']:.2f} %)"
        )
    table = metrics_table(
        metrics["test_accuracy"],
        metrics["test_balanced_accuracy"],
        metrics["per_class_accuracy"],
        metrics["confusion_matrix"],
        title,
    )
    return (
        f"\n{table}\n\n"
        f"  trained {metrics['epochs']} epochs in {metrics['train_seconds']:.1f} s\n"
        f"  run directory: {run_dir}\n"
        f"  view it:       tensorboard --logdir {run_dir.parent}\n"
    )
