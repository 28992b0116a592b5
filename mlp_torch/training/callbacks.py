"""The callbacks every run has: signals, console output, and the run directory's files.

:func:`default_callbacks` lists them in the order they run for each event. Those that write the
run's files (the gradient check and the TensorBoard log it goes to, checkpoints, ``metrics.json``)
come as one group that a run can leave out (``writers=False``), e.g. every process but one when
several train together. To add behaviour, write a :class:`~mlp_torch.training.loop.Callback` and
pass it to :func:`~mlp_torch.training.train` (``callbacks=[...]``).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch

from ..compare import backend_gradients, errors
from ..errors import DivergenceError, WriteError
from ..utils import print_line
from .checkpoint import save_checkpoint
from .interrupt import GracefulInterrupt
from .loop import Callback
from .report import epoch_line, final_report
from .rundir import write_json
from .state import TrainState
from .tensorboard import RunLogger


class GracefulStop(Callback):
    """Ctrl-C, SIGTERM or SIGHUP: finish the step, save ``last.pt``, stop. A second one aborts at once."""

    def __init__(self) -> None:
        self.interrupt = GracefulInterrupt()

    def on_train_start(self, state: TrainState) -> None:
        self.interrupt.install()

    def on_step_end(self, state: TrainState) -> None:
        if self.interrupt.requested:
            state.should_stop, state.signal = True, self.interrupt.signal_name

    on_epoch_end = on_step_end  # a signal during validation or saving stops before the next epoch

    def on_train_end(self, state: TrainState) -> None:
        self.interrupt.restore()

    def on_failure(self, state: TrainState, error: BaseException) -> None:
        self.interrupt.restore()


class StopAfterEpochs(Callback):
    """Stop, as if interrupted, once ``epochs`` epochs are complete."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch >= self.epochs:
            state.should_stop = True


class ConsoleOutput(Callback):
    """One line per epoch and the final table on stdout; a progress bar per epoch on stderr if asked."""

    def __init__(self, progress_bar: bool) -> None:
        self.progress_bar = progress_bar
        self.bar: Any = None

    def on_epoch_start(self, state: TrainState) -> None:
        if self.progress_bar:
            from tqdm import tqdm

            assert state.progress is not None
            self.bar = tqdm(
                total=len(state.batches),
                initial=state.progress.step,
                desc=f"epoch {state.epoch + 1}/{state.config.epochs}",
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
            )

    def on_step_end(self, state: TrainState) -> None:
        if self.bar is not None and state.progress is not None:
            p = state.progress
            self.bar.update(1)
            self.bar.set_postfix(
                loss=f"{p.loss_sum / p.seen:.4f}", acc=f"{100 * p.correct / p.seen:.1f}%", refresh=False
            )

    def on_epoch_end(self, state: TrainState) -> None:
        self.close_bar()
        print_line(epoch_line(state.history[-1], state.config.epochs, state.improved and state.has_val))

    def on_train_end(self, state: TrainState) -> None:
        self.close_bar()
        if state.test_result is not None:
            print_line(final_report(state.final_metrics, state.data.classes, state.run_dir))

    def on_failure(self, state: TrainState, error: BaseException) -> None:
        self.close_bar()

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class GradientCheck(Callback):
    """Every ``every`` steps, the model's gradient path against builtin on the step's batch, logged.

    Runs before the step, on the parameters the step starts from; ``grad_check/*`` in TensorBoard,
    by global step.
    """

    def __init__(self, log: RunLogger, every: int) -> None:
        self.log = log
        self.every = every

    def on_step_start(self, state: TrainState) -> None:
        if not self.every or state.global_step % self.every or state.batch is None:
            return
        x, y = state.batch
        model = state.model
        other = model.backend if model.backend != "builtin" else "custom"
        _, reference = backend_gradients(model, x, y, "builtin", state.class_weight)
        _, checked = backend_gradients(model, x, y, other, state.class_weight)
        worst_abs = worst_rel = worst_scaled = 0.0
        for name in reference:
            max_abs, max_rel, scaled = errors(checked[name], reference[name])
            worst_abs, worst_rel, worst_scaled = (
                max(worst_abs, max_abs),
                max(worst_rel, max_rel),
                max(worst_scaled, scaled),
            )
        self.log.grad_check(worst_rel, state.global_step)
        # elementwise max_rel is rounding noise in float32 (see mlp_torch.compare); scaled_error is the
        # error `mlp-torch compare` judges float32 gradients by (tolerance TOL_BACKENDS_FLOAT32)
        errors_now = {"grad_check/max_abs_error": worst_abs, "grad_check/scaled_error": worst_scaled}
        self.log.scalars(errors_now, state.global_step)


class TensorBoardLog(Callback):
    """Per epoch: losses, accuracies, lr, per-layer norms; every ``histogram_every`` epochs histograms,
    weight templates and the validation confusion matrix; at the end the test confusion matrix and
    the hparams. See :mod:`mlp_torch.training.tensorboard` for the tags."""

    def __init__(self, log: RunLogger, histogram_every: int) -> None:
        self.log = log
        self.histogram_every = histogram_every

    def on_train_start(self, state: TrainState) -> None:
        if state.epoch == 0 and state.progress is None:  # a new run, not a resumed one
            self.log.config(state.config.to_dict())

    def on_epoch_end(self, state: TrainState) -> None:
        record, val, epoch = state.history[-1], state.val_result, state.epoch
        scalars = {"loss/train": record["train_loss"], "accuracy/train": record["train_accuracy"], "lr": record["lr"]}
        if val is not None:
            scalars.update(
                {"loss/val": val.loss, "accuracy/val": val.accuracy, "accuracy/val_balanced": val.balanced_accuracy}
            )
        self.log.scalars(scalars, epoch)
        self.log.layer_norms(state.model, state.grad_norms, epoch)
        if self.histogram_every and (epoch % self.histogram_every == 0 or epoch == state.config.epochs):
            if val is None:  # the training split, preprocessed as its batches are
                probe = state.batches.standardizer(state.batches.x[:512])
            else:
                probe = state.standardizer(state.val.x[:512])
            probe = probe.to(next(state.model.parameters()).dtype)
            self.log.histograms(state.model, state.model.hidden_activations(probe), epoch)
            self.log.templates(state.model.layers[0].weight, state.data.image_size, epoch)
            if val is not None:
                self.log.confusion(torch.tensor(val.confusion_matrix), epoch)

    def on_train_end(self, state: TrainState) -> None:
        if state.test_result is not None:
            self.log.confusion(torch.tensor(state.test_result.confusion_matrix), state.epoch, tag="confusion/test")
            config = state.config
            hparams = {k: v for k, v in config.to_dict().items() if k != "data"}
            hparams.update(
                {
                    "dataset": config.data.dataset,
                    "classes": ",".join(state.data.classes),
                    "hidden": "-".join(map(str, config.hidden)),
                }
            )
            metrics = ("test_accuracy", "test_balanced_accuracy", "best_val_accuracy", "best_val_balanced_accuracy")
            self.log.final(hparams, {k: state.final_metrics[k] for k in metrics})
        self.log.close()  # its last flush may be the write that fails

    def on_failure(self, state: TrainState, error: BaseException) -> None:
        with contextlib.suppress(WriteError):  # quietly: the failure is reported already
            self.log.close()


class Checkpoints(Callback):
    """``checkpoints/last.pt`` after every epoch and when stopped part-way; ``best.pt`` when an epoch improves."""

    def on_epoch_end(self, state: TrainState) -> None:
        if state.improved:
            self.save(state, "best.pt")
        self.save(state, "last.pt")

    def on_train_end(self, state: TrainState) -> None:
        if not state.completed:
            self.save(state, "last.pt")

    @staticmethod
    def save(state: TrainState, name: str) -> None:
        path = state.run_dir / "checkpoints" / name
        try:
            save_checkpoint(path, state.state_dict())
        except OSError as err:
            raise WriteError(
                f"cannot write {path}: {err.strerror or err}; the checkpoints saved before are intact"
            ) from None


class MetricsFile(Callback):
    """``metrics.json`` at the end, and when the run diverges or a file cannot be written (where the disk allows)."""

    def on_train_end(self, state: TrainState) -> None:
        write_json(self.path(state), state.final_metrics)

    def on_failure(self, state: TrainState, error: BaseException) -> None:
        if isinstance(error, (DivergenceError, WriteError)):
            status = "diverged" if isinstance(error, DivergenceError) else "failed"
            with contextlib.suppress(WriteError):  # the disk may be the failure
                write_json(self.path(state), state.metrics(status=status, error=str(error)))

    @staticmethod
    def path(state: TrainState) -> Path:
        return state.run_dir / "metrics.json"


def default_callbacks(state: TrainState, writers: bool = True) -> list[Callback]:
    """The callbacks of every run, in the order they run.

    Args:
        state: the run, its directory made.
        writers: also the ones that write the run's files.
    """
    config = state.config
    show_bar = config.progress if config.progress is not None else sys.stderr.isatty()
    callbacks: list[Callback] = [GracefulStop()]
    if writers:
        log = RunLogger(state.run_dir)
        callbacks += [GradientCheck(log, config.check_grads_every), Checkpoints(), MetricsFile()]
        callbacks += [TensorBoardLog(log, config.histogram_every)]
    return [*callbacks, ConsoleOutput(show_bar)]
