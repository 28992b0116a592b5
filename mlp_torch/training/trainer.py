"""``train(config) -> metrics`` and ``evaluate(...)``: the lecture's SGD loop, made safe to leave running.

One epoch: shuffle on the device, and for each batch ``zero_grad → compute_gradients (the chosen
backend) → check finiteness → optimizer.step → scheduler.step``. After each epoch: evaluate on
validation, log to TensorBoard, save ``last.pt`` (and ``best.pt`` when the balanced validation
accuracy improves). At the end the best checkpoint is evaluated once on the test split.

Safety:

* a non-finite loss or gradient stops training before the optimizer steps (the parameters and
  every saved checkpoint stay as they were), writes ``metrics.json`` and raises
  :class:`DivergenceError`;
* SIGINT/SIGTERM finish the current step, save ``last.pt`` with the position inside the epoch,
  and return ``status="interrupted"``; a second signal aborts at once (checkpoints are atomic);
* ``resume`` restores model, optimizer, scheduler, every random generator and the position in the
  epoch, so a resumed run on the CPU ends with the same parameters, bit for bit.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..compare import backend_gradients, errors
from ..data import DataBundle, DeviceBatches, Standardizer, balance_weights, load_data
from ..errors import DivergenceError, UsageError
from ..models import build_model
from ..utils import atomic_write, select_device, set_seed
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .evaluation import EvalResult, evaluate
from .interrupt import GracefulInterrupt
from .report import epoch_line, final_report
from .rundir import device_name, json_default, make_run_dir, nan_to_none, versions
from .schedule import build_optimizer, build_scheduler
from .tensorboard import RunLogger

__all__ = ["EvalResult", "Trainer", "evaluate", "load_run_config", "make_run_dir", "train"]


@dataclass
class EpochProgress:
    """Where an epoch stands: enough to stop after any step and continue exactly."""

    order: Tensor
    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    grad_norm_sums: list[float] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        return {
            "order": self.order.cpu(),
            "step": self.step,
            "loss_sum": self.loss_sum,
            "correct": self.correct,
            "seen": self.seen,
            "grad_norm_sums": list(self.grad_norm_sums),
        }


def train(config: TrainConfig, resume: Path | None = None, stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Train a model as ``config`` says; return the metrics also written to ``metrics.json``.

    Args:
        config: the full run configuration.
        resume: a run directory to continue from its ``checkpoints/last.pt``; ``config`` must be
            that run's (see :func:`load_run_config`), possibly with more ``epochs``.
        stop_after_epochs: stop (as if interrupted) once this many epochs are complete.

    Returns:
        ``metrics`` with ``status`` = ``completed`` or ``interrupted``.

    Raises:
        DivergenceError: the loss or a gradient became non-finite (``metrics.json`` says where).
    """
    return Trainer(config, resume).run(stop_after_epochs)


def load_run_config(run_dir: Path) -> TrainConfig:
    """The :class:`TrainConfig` saved in ``run_dir/config.json``.

    Raises:
        UsageError: ``run_dir`` is not a run directory.
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file() or not (Path(run_dir) / "checkpoints" / "last.pt").is_file():
        raise UsageError(
            f"{run_dir} is not a run directory (it needs config.json and checkpoints/last.pt); "
            f"pass a folder such as runs/<date-time>_<name> made by mlp-torch train"
        )
    try:
        saved = json.loads(path.read_text())
        return TrainConfig.from_dict(saved["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UsageError(f"{path} is not a valid run config ({err})") from None


class Trainer:
    """The state of one run; :func:`train` is its public face."""

    def __init__(self, config: TrainConfig, resume: Path | None = None) -> None:
        self.config = config
        self.device = select_device(config.device)
        set_seed(config.seed)
        self.data: DataBundle = load_data(config.data, allow_download=resume is None)  # a resume never downloads
        self.standardizer = Standardizer.fit(self.data.train.x)
        self.model = build_model(
            kind=config.model,
            in_features=self.data.in_features,
            num_classes=self.data.num_classes,
            hidden=config.hidden,
            activation=config.activation,
            backend=config.backend,
            seed=config.seed,
        ).to(self.device)
        self.train_split = self.data.train.to(self.device)
        self.val_split = self.data.val.to(self.device)
        loss_weights, sample_weights = balance_weights(config.data, self.data.train.y, self.data.num_classes)
        self.class_weight = None if loss_weights is None else loss_weights.to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.batches = DeviceBatches(
            self.train_split.x,
            self.train_split.y,
            config.batch_size,
            self.standardizer,
            shuffle=True,
            generator=self.generator,
            augment_flip=config.data.augment_flip,
            augment_crop=config.data.augment_crop,
            sample_weights=sample_weights,
        )
        self.optimizer = build_optimizer(config, self.model.parameters())
        self.scheduler = build_scheduler(config, self.optimizer, steps_per_epoch=len(self.batches))
        self.epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.best = {"val_balanced_accuracy": -1.0, "val_accuracy": float("nan"), "epoch": 0}
        self.train_seconds = 0.0
        self.progress: EpochProgress | None = None
        if resume is None:
            self.run_dir = make_run_dir(config.runs_dir, config.run_name)
            self.write_config()
        else:
            self.run_dir = Path(resume)
            self.restore(load_checkpoint(self.run_dir / "checkpoints" / "last.pt"))
        (self.run_dir / "checkpoints").mkdir(exist_ok=True)
        self.logger = RunLogger(self.run_dir)

    # ------------------------------------------------------------------ the loop

    def run(self, stop_after_epochs: int | None = None) -> dict[str, Any]:
        cfg = self.config
        if self.epoch == 0 and self.progress is None:
            self.logger.config(cfg.to_dict())
        status = "completed"
        try:
            with GracefulInterrupt() as interrupt:
                while self.epoch < cfg.epochs:
                    start = time.perf_counter()
                    try:
                        finished = self.train_one_epoch(interrupt)
                    finally:  # counted also when the epoch ends in a divergence
                        self.train_seconds += time.perf_counter() - start
                    if not finished:
                        status = "interrupted"
                        break
                    self.end_of_epoch()
                    if interrupt.requested or (stop_after_epochs is not None and self.epoch >= stop_after_epochs):
                        status = "interrupted" if self.epoch < cfg.epochs else status
                        break
        except DivergenceError as err:
            self.write_metrics({"status": "diverged", "error": str(err)})
            self.logger.close()
            raise
        if status == "interrupted":
            self.save("last.pt")
            metrics = self.write_metrics({"status": "interrupted", "signal": interrupt.signal_name or None})
            self.logger.close()
            return metrics
        metrics = self.finish()
        self.logger.close()
        return metrics

    def train_one_epoch(self, interrupt: GracefulInterrupt) -> bool:
        """Run the rest of the current epoch; ``False`` if a signal stopped it part-way."""
        cfg, model = self.config, self.model
        if self.progress is None:
            self.progress = EpochProgress(order=self.batches.epoch_order(), grad_norm_sums=[0.0] * len(model.layers))
        p = self.progress
        bar = _progress_bar(len(self.batches), p.step, f"epoch {self.epoch + 1}/{cfg.epochs}", cfg.progress)
        params = [list(layer.parameters()) for layer in model.layers]
        dtype = next(model.parameters()).dtype
        try:
            while p.step < len(self.batches):
                xb, yb = self.batches.batch(p.order, p.step)
                xb = xb.to(dtype)
                if cfg.check_grads_every and self.global_step % cfg.check_grads_every == 0:
                    self.check_gradients(xb, yb)
                self.optimizer.zero_grad(set_to_none=True)
                loss, logits = model.compute_gradients(xb, yb, class_weight=self.class_weight)
                grad_sq = [sum(g.grad.double().square().sum() for g in layer if g.grad is not None) for layer in params]
                stats = torch.stack(
                    [
                        loss.double(),
                        (logits.argmax(1) == yb).sum().double(),
                        *[torch.as_tensor(s, dtype=torch.float64, device=loss.device) for s in grad_sq],
                    ]
                )
                loss_value, correct, *layer_sq = stats.tolist()  # the one sync per step
                self.check_finite(loss_value, layer_sq, p.step)
                self.optimizer.step()
                self.scheduler.step()
                self.global_step += 1
                p.step += 1
                p.loss_sum += loss_value * len(yb)
                p.correct += int(correct)
                p.seen += len(yb)
                for i, sq in enumerate(layer_sq):
                    p.grad_norm_sums[i] += math.sqrt(sq)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{p.loss_sum / p.seen:.4f}", acc=f"{100 * p.correct / p.seen:.1f}%", refresh=False
                    )
                if interrupt.requested and p.step < len(self.batches):
                    return False
        finally:
            if bar is not None:
                bar.close()
        return True

    def check_finite(self, loss: float, layer_sq: list[float], step: int) -> None:
        bad = []
        if not math.isfinite(loss):
            bad.append(f"the loss is {loss}")
        bad += [
            f"the gradient of layer{i} has norm {math.sqrt(sq) if sq >= 0 else sq}"
            for i, sq in enumerate(layer_sq)
            if not math.isfinite(sq)
        ]
        if bad:
            last = self.run_dir / "checkpoints" / "last.pt"
            kept = f"; the last good checkpoint {last} is unchanged" if last.exists() else ""
            raise DivergenceError(
                f"training diverged at epoch {self.epoch + 1}, step {step + 1} (global step {self.global_step + 1}): "
                f"{' and '.join(bad)}. Lower the learning rate (--lr {self.config.lr:g} now) or add warm-up{kept}"
            )

    def check_gradients(self, xb: Tensor, yb: Tensor) -> None:
        """Compare the model's gradient path with builtin on this batch; log the largest error."""
        other = self.model.backend if self.model.backend != "builtin" else "custom"
        _, ref = backend_gradients(self.model, xb, yb, "builtin", self.class_weight)
        _, got = backend_gradients(self.model, xb, yb, other, self.class_weight)
        worst_abs = worst_rel = worst_scaled = 0.0
        for name in ref:
            max_abs, max_rel, scaled = errors(got[name], ref[name])
            worst_abs, worst_rel = max(worst_abs, max_abs), max(worst_rel, max_rel)
            worst_scaled = max(worst_scaled, scaled)
        self.logger.grad_check(worst_rel, self.global_step)
        self.logger.writer.add_scalar("grad_check/max_abs_error", worst_abs, self.global_step)
        # elementwise max_rel is rounding noise in float32 (see mlp_torch.compare); this is the error
        # `mlp-torch compare` judges float32 gradients by (tolerance TOL_BACKENDS_FLOAT32)
        self.logger.writer.add_scalar("grad_check/scaled_error", worst_scaled, self.global_step)

    def end_of_epoch(self) -> None:
        cfg, p = self.config, self.progress
        assert p is not None
        self.epoch += 1
        val = evaluate(self.model, self.val_split.x, self.val_split.y, self.standardizer)
        steps = max(len(self.batches), 1)
        record = {
            "epoch": self.epoch,
            "train_loss": p.loss_sum / max(p.seen, 1),
            "train_accuracy": p.correct / max(p.seen, 1),
            "val_loss": val.loss,
            "val_accuracy": val.accuracy,
            "val_balanced_accuracy": val.balanced_accuracy,
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": self.train_seconds,
        }
        self.history.append(record)
        grad_norms = [s / steps for s in p.grad_norm_sums]
        self.progress = None
        self.logger.scalars(
            {
                "loss/train": record["train_loss"],
                "loss/val": val.loss,
                "accuracy/train": record["train_accuracy"],
                "accuracy/val": val.accuracy,
                "accuracy/val_balanced": val.balanced_accuracy,
                "lr": record["lr"],
            },
            self.epoch,
        )
        self.logger.layer_norms(self.model, grad_norms, self.epoch)
        if cfg.histogram_every and (self.epoch % cfg.histogram_every == 0 or self.epoch == cfg.epochs):
            probe = self.standardizer(self.val_split.x[:512]).to(next(self.model.parameters()).dtype)
            self.logger.histograms(self.model, self.model.hidden_activations(probe), self.epoch)
            self.logger.templates(self.model.layers[0].weight, self.data.image_size, self.epoch)
            self.logger.confusion(torch.tensor(val.confusion_matrix), self.epoch)
        improved = val.balanced_accuracy > self.best["val_balanced_accuracy"]
        if improved:
            self.best = {
                "val_balanced_accuracy": val.balanced_accuracy,
                "val_accuracy": val.accuracy,
                "epoch": self.epoch,
            }
        _write_line(epoch_line(record, cfg.epochs, improved))
        if improved:
            self.save("best.pt")
        self.save("last.pt")

    def finish(self) -> dict[str, Any]:
        """Evaluate the best checkpoint once on the test split; write metrics.json and the hparams."""
        best = load_checkpoint(self.run_dir / "checkpoints" / "best.pt", map_location=self.device)
        self.model.load_state_dict(best["model_state"])
        test = self.data.test.to(self.device)
        result = evaluate(self.model, test.x, test.y, self.standardizer)
        metrics = self.write_metrics(
            {
                "status": "completed",
                "test_loss": result.loss,
                "test_accuracy": result.accuracy,
                "test_balanced_accuracy": result.balanced_accuracy,
                "per_class_accuracy": dict(zip(self.data.classes, result.per_class_accuracy)),
                "confusion_matrix": result.confusion_matrix,
            }
        )
        self.logger.confusion(torch.tensor(result.confusion_matrix), self.epoch, tag="confusion/test")
        hp = {k: v for k, v in self.config.to_dict().items() if k != "data"}
        hp.update(
            {
                "dataset": self.config.data.dataset,
                "classes": ",".join(self.data.classes),
                "hidden": "-".join(map(str, self.config.hidden)),
            }
        )
        self.logger.final(
            hp,
            {
                k: metrics[k]
                for k in ("test_accuracy", "test_balanced_accuracy", "best_val_accuracy", "best_val_balanced_accuracy")
            },
        )
        _write_line(final_report(metrics, self.data.classes, self.run_dir))
        return metrics

    # ------------------------------------------------------------------ files

    def write_config(self) -> None:
        info = {
            "config": self.config.to_dict(),
            "command": sys.argv,
            "created": datetime.now().isoformat(timespec="seconds"),
            "device": str(self.device),
            "device_name": device_name(self.device),
            "data": {
                "source": self.data.source,
                "classes": self.data.classes,
                "counts": self.data.counts(),
                "image_size": self.data.image_size,
            },
            "versions": versions(),
        }
        (self.run_dir / "config.json").write_text(json.dumps(info, indent=2) + "\n")

    def write_metrics(self, extra: dict[str, Any]) -> dict[str, Any]:
        metrics = {
            "epochs": self.epoch,
            "best_epoch": self.best["epoch"],
            "best_val_accuracy": self.best["val_accuracy"],
            "best_val_balanced_accuracy": self.best["val_balanced_accuracy"] if self.best["epoch"] else float("nan"),
            "train_seconds": self.train_seconds,
            "classes": self.data.classes,
            "run_dir": str(self.run_dir),
            "history": self.history,
            **extra,
        }
        # strict JSON has no NaN (a class without test images has no accuracy): null instead
        metrics = nan_to_none(metrics)
        with atomic_write(self.run_dir / "metrics.json") as f:
            f.write((json.dumps(metrics, indent=2, allow_nan=False, default=json_default) + "\n").encode())
        return metrics

    def save(self, name: str) -> None:
        save_checkpoint(
            self.run_dir / "checkpoints" / name,
            {
                "model_config": self.model.config(),
                "model_state": self.model.state_dict(),
                "classes": self.data.classes,
                "image_size": self.data.image_size,
                "standardizer": self.standardizer.state_dict(),
                "config": self.config.to_dict(),
                "epoch": self.epoch,
                "global_step": self.global_step,
                "epoch_progress": None if self.progress is None else self.progress.state(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": {
                    "data": self.generator.get_state(),
                    "data_device": self.device.type,
                    "torch": torch.get_rng_state(),
                },
                "best": dict(self.best),
                "history": self.history,
                "train_seconds": self.train_seconds,
            },
        )

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model_state"])
        self.standardizer = Standardizer.from_state_dict(ckpt["standardizer"]).to(self.device)
        self.batches.standardizer = self.standardizer
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["rng"].get("data_device", "cpu") == self.device.type:
            self.generator.set_state(ckpt["rng"]["data"])
        else:  # a CPU generator's state means nothing to a CUDA one: continue, but not bit for bit
            self.generator.manual_seed(self.config.seed + ckpt["global_step"])
            print(
                f"note: resuming on {self.device.type} a run saved on {ckpt['rng'].get('data_device')}: "
                "shuffling continues from a new seed, so the run will not match an uninterrupted one bit for bit",
                file=sys.stderr,
            )
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.epoch, self.global_step = ckpt["epoch"], ckpt["global_step"]
        self.best, self.history = dict(ckpt["best"]), list(ckpt["history"])
        self.train_seconds = ckpt["train_seconds"]
        progress = ckpt.get("epoch_progress")
        if progress is not None:
            self.progress = EpochProgress(
                order=progress["order"].to(self.device),
                step=progress["step"],
                loss_sum=progress["loss_sum"],
                correct=progress["correct"],
                seen=progress["seen"],
                grad_norm_sums=list(progress["grad_norm_sums"]),
            )


def _progress_bar(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def _write_line(text: str) -> None:
    print(text, flush=True)
