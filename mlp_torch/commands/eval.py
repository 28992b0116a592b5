"""``mlp-torch eval RUN_DIR|CHECKPOINT``: accuracy, balanced accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import HelpFormatter
from .json_output import add_json_argument, report_stream, write_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a run or checkpoint on its test (or val) split",
        description="Evaluate a trained model on a split of the data it was trained on.\n"
        "A run directory means its checkpoints/best.pt; which data, and where they are, come from\n"
        "its config.json. A checkpoint file outside its run directory needs --data-root.\n"
        "Nothing is downloaded: place CIFAR archives in the data root by hand if they are missing.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, metavar="RUN_DIR|CHECKPOINT", help="a run directory or a .pt file")
    parser.add_argument("--split", choices=("test", "val", "train"), default="test", help="which split to evaluate")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="where the data live now (default: the run's data root from its config.json; "
        "required for a checkpoint file outside its run directory)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where decoded datasets are cached (default: $XDG_CACHE_HOME/mlp_torch or ~/.cache/mlp_torch)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add_json_argument(parser, "the metrics")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.inference import evaluate_checkpoint
    from ..training.report import metrics_table
    from ..utils import select_device

    result, classes = evaluate_checkpoint(
        args.checkpoint, select_device(args.device), args.split, args.data_root, args.cache_dir
    )
    per_class = dict(zip(classes, result.per_class_accuracy))
    print(
        metrics_table(
            result.accuracy,
            result.balanced_accuracy,
            per_class,
            result.confusion_matrix,
            f"{args.split} split, {args.checkpoint}  (loss {result.loss:.4f})",
        ),
        file=report_stream(args.json),
    )
    write_json(
        args.json,
        {
            "split": args.split,
            "loss": result.loss,
            "accuracy": result.accuracy,
            "balanced_accuracy": result.balanced_accuracy,
            "per_class_accuracy": per_class,
            "confusion_matrix": result.confusion_matrix,
            "classes": classes,
        },
    )
    return 0
