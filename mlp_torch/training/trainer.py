"""``train(config) -> metrics`` and ``evaluate(...)``: the lecture's SGD loop, made safe to leave running.

One epoch: shuffle on the device, and for each batch ``zero_grad → compute_gradients (the chosen
backend) → check finiteness → optimizer.step → scheduler.step``. After each epoch: evaluate on
validation, log to TensorBoard, save ``last.pt`` (and ``best.pt`` when the balanced validation
accuracy improves). At the end the best checkpoint is evaluated once on the test split.

Without a validation split (``--val-fraction 0``, or too few images for any to be held out) the
last epoch's model is kept as the best one, and the run says so.

Safety:

* a non-finite loss or gradient, or an update that overflows float32, stops training before the
  optimizer steps (every saved checkpoint stays as it was), writes ``metrics.json`` and raises
  :class:`DivergenceError`;
* SIGINT/SIGTERM/SIGHUP finish the current step, save ``last.pt`` with the position inside the
  epoch, and return ``status="interrupted"``; a second signal aborts at once (checkpoints are atomic);
* a file that cannot be written (a full disk, a file-size limit) raises :class:`WriteError` naming
  it, after ``metrics.json`` says ``status: "failed"`` where the disk still allows; the checkpoints
  saved before stay intact;
* ``resume`` restores model, optimizer, scheduler, every random generator and the position in the
  epoch, so a resumed run on the CPU ends with the same parameters, bit for bit. It refuses data
  that changed since the checkpoint and a run that another process is training (a lock), and
  removes the temporary files a killed save left behind.
"""

from __future__ import annotations

import contextlib
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
from ..errors import DivergenceError, WriteError
from ..models import build_model
from ..utils import print_line, select_device, set_seed
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .evaluation import EvalResult, evaluate
from .interrupt import GracefulInterrupt
from .report import epoch_line, final_report
from .resume import check_same_data, load_run_config, note, open_for_resume, record_resumed_config
from .rundir import RunLock, check_runs_dir, device_name, make_run_dir, nan_to_none, versions, write_json
from .schedule import build_optimizer, build_scheduler, restore_scheduler
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
            that run's (see :func:`load_run_config`), possibly with another ``epochs`` (at least
            the epochs done): the learning-rate schedule is rebuilt for the new total (see
            :mod:`mlp_torch.training.schedule`) and ``config.json`` records it.
        stop_after_epochs: stop (as if interrupted) once this many epochs are complete.

    Returns:
        ``metrics`` with ``status`` = ``completed`` or ``interrupted``.

    Raises:
        DivergenceError: the loss or a gradient became non-finite (``metrics.json`` says where).
        WriteError: a checkpoint, ``metrics.json`` or the TensorBoard log could not be written.
        RunInUseError: another process is training ``resume``.
        DataError: the data changed since ``resume`` was saved.
    """
    return Trainer(config, resume).run(stop_after_epochs)


class Trainer:
    """The state of one run; :func:`train` is its public face."""

    def __init__(self, config: TrainConfig, resume: Path | None = None) -> None:
        self.config = config = config.with_absolute_paths()
        self.lock: RunLock | None = None
        self.logger: RunLogger | None = None
        try:
            self.setup(resume)
        except BaseException:
            self.close()
            raise

    def setup(self, resume: Path | None) -> None:
        """Everything before the first step: refuse what cannot work before the data are loaded."""
        config = self.config
        if resume is None:
            check_runs_dir(config.runs_dir)
            ckpt = None
        else:
            self.run_dir = Path(resume)
            self.lock, ckpt = open_for_resume(self.run_dir, config.epochs)
        self.device = select_device(config.device)
        set_seed(config.seed)
        self.data: DataBundle = load_data(config.data, allow_download=resume is None)  # a resume never downloads
        if ckpt is not None:
            check_same_data(self.run_dir, ckpt, self.data)
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
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # the learning rate of the latest step
        self.has_val = len(self.val_split) > 0
        if ckpt is None:
            self.run_dir = make_run_dir(config.runs_dir, config.run_name)
            self.lock = RunLock(self.run_dir)
            self.write_config()
        else:
            self.restore(ckpt)
            record_resumed_config(self.run_dir, config, self.epoch)
        self.note_validation_split()
        try:
            (self.run_dir / "checkpoints").mkdir(exist_ok=True)
        except OSError as err:
            raise WriteError(f"cannot create {self.run_dir / 'checkpoints'}: {err.strerror or err}") from None
        self.logger = RunLogger(self.run_dir)

    def note_validation_split(self) -> None:
        if not self.has_val:
            note(
                "no validation split (--val-fraction "
                f"{self.config.data.val_fraction:g} holds out no image): the last epoch's model is kept as the best"
            )
            return
        without = [name for name, n in self.data.counts()["val"].items() if n == 0]
        if without:
            note(
                f"class(es) {', '.join(without)} have no validation images (too few to hold any out); "
                "the validation balanced accuracy averages the other classes"
            )

    # ------------------------------------------------------------------ the loop

    def run(self, stop_after_epochs: int | None = None) -> dict[str, Any]:
        """Train the remaining epochs; always close the TensorBoard log and release the run's lock."""
        try:
            metrics = self.train_epochs(stop_after_epochs)
            self.log.close()  # its last flush may be the write that fails
            return metrics
        except WriteError as err:
            with contextlib.suppress(WriteError):  # where the disk still allows
                self.write_metrics({"status": "failed", "error": str(err)})
            raise
        finally:
            self.close()

    def close(self) -> None:
        """Close the TensorBoard log (quietly: a failure was reported already) and release the lock."""
        if self.logger is not None:
            with contextlib.suppress(WriteError):
                self.logger.close()
        if self.lock is not None:
            self.lock.release()

    @property
    def log(self) -> RunLogger:
        assert self.logger is not None, "set up in __init__"
        return self.logger

    def train_epochs(self, stop_after_epochs: int | None) -> dict[str, Any]:
        cfg = self.config
        if self.epoch == 0 and self.progress is None:
            self.log.config(cfg.to_dict())
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
            raise
        if status == "interrupted":
            self.save("last.pt")
            return self.write_metrics({"status": "interrupted", "signal": interrupt.signal_name or None})
        return self.finish()

    def train_one_epoch(self, interrupt: GracefulInterrupt) -> bool:
        """Run the rest of the current epoch; ``False`` if a signal stopped it part-way."""
        cfg, model = self.config, self.model
        if self.progress is None:
            self.progress = EpochProgress(order=self.batches.epoch_order(), grad_norm_sums=[0.0] * len(model.layers))
        p = self.progress
        show_bar = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        bar = _progress_bar(len(self.batches), p.step, f"epoch {self.epoch + 1}/{cfg.epochs}", show_bar)
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
                self.step_lr = self.optimizer.param_groups[0]["lr"]
                try:
                    self.optimizer.step()
                except RuntimeError as err:  # η·update beyond float32 ("value cannot be converted ...")
                    if "overflow" not in str(err):
                        raise
                    raise self.diverged(p.step, [f"the update overflows float32 (lr {self.step_lr:g})"]) from None
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
            raise self.diverged(step, bad)

    def diverged(self, step: int, reasons: list[str]) -> DivergenceError:
        last = self.run_dir / "checkpoints" / "last.pt"
        kept = f"; the last good checkpoint {last} is unchanged" if last.exists() else ""
        return DivergenceError(
            f"training diverged at epoch {self.epoch + 1}, step {step + 1} (global step {self.global_step + 1}): "
            f"{' and '.join(reasons)}. Lower the learning rate (--lr {self.config.lr:g} now) or add warm-up{kept}"
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
        self.log.grad_check(worst_rel, self.global_step)
        # elementwise max_rel is rounding noise in float32 (see mlp_torch.compare); scaled_error is the
        # error `mlp-torch compare` judges float32 gradients by (tolerance TOL_BACKENDS_FLOAT32)
        errors_now = {"grad_check/max_abs_error": worst_abs, "grad_check/scaled_error": worst_scaled}
        self.log.scalars(errors_now, self.global_step)

    def end_of_epoch(self) -> None:
        cfg, p = self.config, self.progress
        assert p is not None
        self.epoch += 1
        val = evaluate(self.model, self.val_split.x, self.val_split.y, self.standardizer) if self.has_val else None
        nan = float("nan")
        steps = max(len(self.batches), 1)
        record = {
            "epoch": self.epoch,
            "train_loss": p.loss_sum / max(p.seen, 1),
            "train_accuracy": p.correct / max(p.seen, 1),
            "val_loss": nan if val is None else val.loss,
            "val_accuracy": nan if val is None else val.accuracy,
            "val_balanced_accuracy": nan if val is None else val.balanced_accuracy,
            "lr": self.step_lr,  # of the epoch's last step (the scheduler has already moved on)
            "seconds": self.train_seconds,
        }
        self.history.append(record)
        grad_norms = [s / steps for s in p.grad_norm_sums]
        self.progress = None
        scalars = {"loss/train": record["train_loss"], "accuracy/train": record["train_accuracy"], "lr": record["lr"]}
        if val is not None:
            scalars.update(
                {"loss/val": val.loss, "accuracy/val": val.accuracy, "accuracy/val_balanced": val.balanced_accuracy}
            )
        self.log.scalars(scalars, self.epoch)
        self.log.layer_norms(self.model, grad_norms, self.epoch)
        if cfg.histogram_every and (self.epoch % cfg.histogram_every == 0 or self.epoch == cfg.epochs):
            shown = self.train_split if val is None else self.val_split
            probe = self.standardizer(shown.x[:512]).to(next(self.model.parameters()).dtype)
            self.log.histograms(self.model, self.model.hidden_activations(probe), self.epoch)
            self.log.templates(self.model.layers[0].weight, self.data.image_size, self.epoch)
            if val is not None:
                self.log.confusion(torch.tensor(val.confusion_matrix), self.epoch)
        # without a validation split every epoch is "the best so far": the last one is kept
        improved = val is None or val.balanced_accuracy > self.best["val_balanced_accuracy"]
        if improved:
            self.best = {
                "val_balanced_accuracy": record["val_balanced_accuracy"],
                "val_accuracy": record["val_accuracy"],
                "epoch": self.epoch,
            }
        print_line(epoch_line(record, cfg.epochs, improved and val is not None))
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
        self.log.confusion(torch.tensor(result.confusion_matrix), self.epoch, tag="confusion/test")
        hp = {k: v for k, v in self.config.to_dict().items() if k != "data"}
        hp.update(
            {
                "dataset": self.config.data.dataset,
                "classes": ",".join(self.data.classes),
                "hidden": "-".join(map(str, self.config.hidden)),
            }
        )
        self.log.final(
            hp,
            {
                k: metrics[k]
                for k in ("test_accuracy", "test_balanced_accuracy", "best_val_accuracy", "best_val_balanced_accuracy")
            },
        )
        print_line(final_report(metrics, self.data.classes, self.run_dir))
        return metrics

    # ------------------------------------------------------------------ files

    def write_config(self) -> None:
        """``config.json``: the config (paths absolute), the command, versions, device and data counts."""
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
                "digest": self.data.digest,
            },
            "versions": versions(),
        }
        write_json(self.run_dir / "config.json", info)

    def write_metrics(self, extra: dict[str, Any]) -> dict[str, Any]:
        metrics = {
            "epochs": self.epoch,
            "best_epoch": self.best["epoch"],
            "best_val_accuracy": self.best["val_accuracy"],
            "best_val_balanced_accuracy": self.best["val_balanced_accuracy"] if self.best["epoch"] else float("nan"),
            "train_seconds": self.train_seconds,
            "classes": self.data.classes,
            "run_dir": str(self.run_dir),
            "selected_by": "val_balanced_accuracy" if self.has_val else "last_epoch",
            "history": self.history,
            **extra,
        }
        # strict JSON has no NaN (a class without test images has no accuracy): null instead
        write_json(self.run_dir / "metrics.json", metrics)
        return nan_to_none(metrics)

    def save(self, name: str) -> None:
        path = self.run_dir / "checkpoints" / name
        try:
            self.write_checkpoint(path)
        except OSError as err:
            raise WriteError(
                f"cannot write {path}: {err.strerror or err}; the checkpoints saved before are intact"
            ) from None

    def write_checkpoint(self, path: Path) -> None:
        save_checkpoint(
            path,
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
                "data_fingerprint": self.data.fingerprint(),
            },
        )

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model_state"])
        self.standardizer = Standardizer.from_state_dict(ckpt["standardizer"]).to(self.device)
        self.batches.standardizer = self.standardizer
        self.optimizer.load_state_dict(ckpt["optimizer"])
        restore_scheduler(self.scheduler, ckpt["scheduler"])  # the schedule of this config's --epochs
        if ckpt["rng"].get("data_device", "cpu") == self.device.type:
            self.generator.set_state(ckpt["rng"]["data"])
        else:  # a CPU generator's state means nothing to a CUDA one: continue, but not bit for bit
            self.generator.manual_seed((self.config.seed + ckpt["global_step"]) % 2**64)
            note(
                f"resuming on {self.device.type} a run saved on {ckpt['rng'].get('data_device')}: "
                "shuffling continues from a new seed, so the run will not match an uninterrupted one bit for bit"
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
