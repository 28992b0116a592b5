"""The callbacks every run has: signals, console output, and the run directory's files.

:func:`default_callbacks` lists them in the order they run for each event. Those that write the
run's files (the gradient check and the TensorBoard log it goes to, checkpoints, ``metrics.json``)
come as one group that a run can leave out (``writers=False``), e.g. every process but one when
several train together. To add behaviour, write a :class:`~mlp_torch.training.loop.Callback` and
pass it to :func:`~mlp_torch.training.train` (``callbacks=[...]``).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ..compare import backend_gradients, layer_error_tolerance, layer_errors
from ..errors import DivergenceError, WriteError
from ..models import Classifier, build_model
from ..utils import print_line
from .checkpoint import checkpoint_bytes, write_checkpoint_bytes
from .evaluation import EvalResult
from .hparams import hparams
from .interrupt import GracefulInterrupt
from .loop import Callback
from .pictures import picture_callbacks
from .report import epoch_line, final_report
from .rundir import write_json
from .state import StepStats, TrainState
from .tensorboard import HPARAM_METRICS, RunLogger

LAST_EVERY_SECONDS = 10.0  # the longest a run goes between two saves of last.pt (see Checkpoints)


class GracefulStop(Callback):
    """Ctrl-C, SIGTERM or SIGHUP: finish the step, save ``last.pt``, stop. A second one aborts at once.

    With several processes (``before_step``) the request is taken before each step instead, and
    the step's all-reduce makes it every process's (:func:`~mlp_torch.training.loop.all_reduce_step`):
    a signal reaches each process at its own moment, or only one, and all must stop after the
    same step. A signal during validation or saving then stops after the next epoch's first step.
    """

    def __init__(self, before_step: bool = False) -> None:
        self.interrupt = GracefulInterrupt()
        self.before_step = before_step

    def on_train_start(self, state: TrainState) -> None:
        self.interrupt.install()

    def on_step_start(self, state: TrainState) -> None:
        if self.before_step:
            self.take_request(state)

    def on_step_end(self, state: TrainState) -> None:
        if not self.before_step:
            self.take_request(state)

    on_epoch_end = on_step_end  # a signal during validation or saving stops before the next epoch

    def take_request(self, state: TrainState) -> None:
        if self.interrupt.requested:
            state.should_stop, state.signal = True, self.interrupt.signal_name

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
    """Every ``every`` steps, the model's gradient path against builtin on the step's batch: a verdict per layer.

    Runs before the step, on the parameters the step starts from. Per layer the error is
    ``‖g − g_builtin‖ / ‖g_builtin‖`` over its weight and bias (:func:`~mlp_torch.compare.layer_errors`):
    ≈ 1e-7 in float32 when the gradients are right, ≈ 1 when wrong. Logged as ``grad_check/layer{i}``
    and ``grad_check/worst_layer`` by global step, with the pass threshold in the charts'
    descriptions, and printed: ``grad check step 500: worst layer error 3.1e-07 (layer0), pass < 1e-04: ok``.
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
        errors = layer_errors(model, checked, reference)
        tolerance = layer_error_tolerance(next(model.parameters()).dtype)
        worst = max(range(len(errors)), key=lambda i: errors[i])

        def description(tag: str) -> str:
            layer = "the worst layer's" if tag.endswith("worst_layer") else f"layer {tag.rsplit('layer', 1)[1]}'s"
            return (
                f"{other} vs builtin on the step's batch: ‖g − g_builtin‖ / ‖g_builtin‖ over {layer} weight and "
                f"bias. Rounding alone gives about 1e-7 in float32; a wrong gradient about 1. "
                f"**Passes below {tolerance:.0e}.**"
            )

        values = {f"grad_check/layer{i}": e for i, e in enumerate(errors)}
        values["grad_check/worst_layer"] = errors[worst]
        self.log.described_scalars(values, state.global_step, description)
        verdict = "ok" if errors[worst] < tolerance else f"FAILED: the {other} gradients are not builtin's"
        console_line(
            f"grad check step {state.global_step}: worst layer error {errors[worst]:.1e} (layer{worst}, "
            f"{other} vs builtin), pass < {tolerance:.0e}: {verdict}"
        )


class TensorBoardLog(Callback):
    """What TensorBoard shows (tags: :mod:`mlp_torch.training.tensorboard`), by global step.

    Every ``log_every`` steps of an epoch, and at its last, the training curves: means over the
    steps since the last point, from the numbers the loop's one sync per step already read. Per
    epoch validation, weight norms and the best validation metrics; every ``histogram_every``
    epochs and at the last the histograms and figures; at the end the test confusion matrix and
    metrics. The HPARAMS entry is written when a new run starts, so an interrupted or pruned run
    is listed too.
    """

    def __init__(self, log: RunLogger, histogram_every: int, log_every: int, grad_check: bool) -> None:
        self.log = log
        self.histogram_every = histogram_every
        self.log_every = log_every
        self.grad_check = grad_check
        self.initial_weight: torch.Tensor | None = None
        self.window = StepWindow()

    def on_train_start(self, state: TrainState) -> None:
        self.initial_weight = initial_first_layer(state.model)
        if state.epoch == 0 and state.progress is None:  # a new run, not a resumed one
            self.log.config(state.config.to_dict())
            self.log.layout(len(state.model.layers), self.grad_check)
            self.log.hparams_start(hparams(state.config, state.data.classes))

    def on_epoch_start(self, state: TrainState) -> None:
        self.window = StepWindow()  # windows stay inside an epoch: a run resumed at an epoch's end draws the same

    def on_step_end(self, state: TrainState) -> None:
        if not self.log_every:
            return
        assert state.step_stats is not None and state.progress is not None
        self.window.add(state.step_stats)
        step_in_epoch = state.progress.step
        if step_in_epoch % self.log_every == 0 or step_in_epoch == len(state.batches):
            self.log.scalars({**self.window.means(), "lr": state.lr}, state.global_step)
            self.window = StepWindow()

    def on_epoch_end(self, state: TrainState) -> None:
        val, step = state.val_result, state.global_step
        scalars = {"epoch": float(state.epoch)}
        if val is not None:
            scalars.update(
                {
                    "loss/val": val.loss,
                    "accuracy/val": val.accuracy,
                    "accuracy/val_balanced": val.balanced_accuracy,
                    "hparam/best_val_accuracy": state.best["val_accuracy"],
                    "hparam/best_val_balanced_accuracy": state.best["val_balanced_accuracy"],
                }
            )
        self.log.scalars(scalars, step)
        self.log.layer_norms(state.model, step)
        every = self.histogram_every
        if every and (state.epoch % every == 0 or state.epoch == state.config.epochs):
            self.figures(state)

    def figures(self, state: TrainState) -> None:
        """Histograms, the templates, the validation confusion matrix and the gradient norms by layer."""
        from .run_figures import confusion_figure, gradient_norms_figure, templates_image  # matplotlib: slow to import

        model, val, step, epoch = state.model, state.val_result, state.global_step, state.epoch
        if val is None:  # the training split, preprocessed as its batches are (whitened already with --whiten)
            probe = state.batches.standardizer(state.batches.x[:256])
        else:
            probe = state.standardizer(state.val.x[:256])
        probe = probe.to(next(model.parameters()).dtype)
        self.log.histograms(model, model.hidden_activations(probe), step)
        assert self.initial_weight is not None
        data = state.data
        templates = templates_image(model.layers[0].weight, self.initial_weight, data.image_size, data.classes)
        if templates is not None:
            self.log.image("templates", templates, step)
        if val is not None:
            title = f"validation, epoch {epoch}\n" + _accuracies(val)
            self.log.figure("confusion/val", confusion_figure(val.confusion_matrix, state.data.classes, title), step)
        norms = [h["grad_norm"] for h in state.history if h.get("grad_norm")]
        if norms:
            first = state.history[-len(norms)]["epoch"]
            self.log.figure("gradients/norm_by_layer", gradient_norms_figure(norms, first_epoch=first), step)

    def on_train_end(self, state: TrainState) -> None:
        test = state.test_result
        if test is not None:
            if self.histogram_every:
                from .run_figures import confusion_figure

                title = f"test, best checkpoint (epoch {state.best['epoch']})\n" + _accuracies(test)
                figure = confusion_figure(test.confusion_matrix, state.data.classes, title)
                self.log.figure("confusion/test", figure, state.global_step)
            metrics = {tag: state.final_metrics.get(tag.split("/", 1)[1]) for tag in HPARAM_METRICS}
            self.log.scalars({tag: v for tag, v in metrics.items() if isinstance(v, float)}, state.global_step)
            self.log.hparams_end(success=True)
        self.log.close()  # its last flush may be the write that fails

    def on_failure(self, state: TrainState, error: BaseException) -> None:
        with contextlib.suppress(WriteError):  # quietly: the failure is reported already
            if isinstance(error, DivergenceError):
                self.log.hparams_end(success=False)
            self.log.close()


class StepWindow:
    """Running sums over the steps since the last logged point, for the per-step curves."""

    def __init__(self) -> None:
        self.steps = self.seen = self.correct = 0
        self.loss_sum = 0.0
        self.norm_sums: list[float] = []

    def add(self, stats: StepStats) -> None:
        self.steps += 1
        self.seen += stats.samples
        self.correct += stats.correct
        self.loss_sum += stats.loss * stats.samples
        norms = [math.sqrt(sq) for sq in stats.grad_sq]
        self.norm_sums = [a + b for a, b in zip(self.norm_sums, norms)] if self.norm_sums else norms

    def means(self) -> dict[str, float]:
        """``loss/train``, ``accuracy/train`` and ``grad_norm/*`` over the window."""
        values = {"loss/train": self.loss_sum / max(self.seen, 1), "accuracy/train": self.correct / max(self.seen, 1)}
        norms = [s / max(self.steps, 1) for s in self.norm_sums]
        values.update({f"grad_norm/layer{i}": n for i, n in enumerate(norms)})
        if len(norms) > 1 and norms[-1] > 0:
            values["grad_norm/first_over_last"] = norms[0] / norms[-1]
        return values


def initial_first_layer(model: Classifier) -> torch.Tensor:
    """The first layer's weight as the run started, on the CPU: rebuilt from the model's seed, bit for bit.

    Initialisation is seeded (``build_model(..., seed=)``), so nothing needs to be stored with the
    run, and a resumed run gets the same tensor.
    """
    return build_model(**model.config()).layers[0].weight.detach()


def console_line(text: str) -> None:
    """A line on stdout between the progress bar's frames (the bar, on stderr, is redrawn below it)."""
    from tqdm import tqdm

    with tqdm.external_write_mode(file=sys.stdout):
        print_line(text)


def _accuracies(result: EvalResult) -> str:
    return f"accuracy {100 * result.accuracy:.1f} %, balanced {100 * result.balanced_accuracy:.1f} %"


class Checkpoints(Callback):
    """``best.pt`` when an epoch improves; ``last.pt`` with it, after the last epoch, when stopped, and in
    between after the first epoch that ends ``every_seconds`` (default :data:`LAST_EVERY_SECONDS`)
    after the previous save.

    So a run whose epochs take longer than that saves ``last.pt`` after every epoch, and one of
    hundreds of 10 ms epochs (the 2-D datasets) does not spend most of its time in ``fsync``. A stop
    (a signal, a callback) always saves; a process killed outright (SIGKILL, power loss) loses at
    most ``every_seconds`` and an epoch, and the save under way; ``best.pt`` never holds a later
    epoch than ``last.pt`` records.

    The disk works while the next epoch trains: at an epoch's end the state is serialised at once
    (a snapshot: training goes on changing the tensors), and one background thread writes the
    files, atomically and in order, ``best.pt`` first. A save waits for the previous one, and the
    run's end for the last, so a failed write (a full disk) is raised as a :class:`WriteError` at
    the next epoch's end at the latest, with the files saved before it intact.
    """

    def __init__(self, every_seconds: float | None = None) -> None:
        self.every_seconds = LAST_EVERY_SECONDS if every_seconds is None else every_seconds
        self.saved_at = time.monotonic()
        self.writer: ThreadPoolExecutor | None = None
        self.pending: list[tuple[Path, Future[None]]] = []

    def on_train_start(self, state: TrainState) -> None:
        self.saved_at = time.monotonic()

    def on_epoch_end(self, state: TrainState) -> None:
        self.raise_failed()
        names = ["best.pt"] if state.improved else []
        if state.improved or state.completed or time.monotonic() - self.saved_at >= self.every_seconds:
            names.append("last.pt")
            self.saved_at = time.monotonic()
        if names:
            self.save(state, names)

    def on_train_end(self, state: TrainState) -> None:
        if not state.completed:
            self.save(state, ["last.pt"])
        self.close()

    def on_failure(self, state: TrainState, error: BaseException) -> None:
        with contextlib.suppress(WriteError):  # what was under way is finished; the error already raised wins
            self.close()

    def save(self, state: TrainState, names: list[str]) -> None:
        """Serialise the state now; write it to ``checkpoints/NAME`` for each name, in the background."""
        self.wait()
        data = checkpoint_bytes(state.state_dict())
        if self.writer is None:
            self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlp-torch-checkpoints")
        for name in names:
            path = state.run_dir / "checkpoints" / name
            self.pending.append((path, self.writer.submit(write_checkpoint_bytes, path, data)))

    def wait(self) -> None:
        """Until every file submitted is written; raise :class:`WriteError` for the first that failed."""
        pending, self.pending = self.pending, []
        failed = None
        for path, future in pending:
            try:
                future.result()
            except OSError as err:
                failed = failed or WriteError(
                    f"cannot write {path}: {err.strerror or err}; the checkpoints saved before are intact"
                )
        if failed is not None:
            raise failed

    def raise_failed(self) -> None:
        """Raise :meth:`wait`'s error now if a write has already failed (without waiting for the rest)."""
        if any(future.done() and future.exception() is not None for _, future in self.pending):
            self.wait()

    def close(self) -> None:
        """Wait for the writes under way (raising as :meth:`wait`), then end the writer thread."""
        try:
            self.wait()
        finally:
            if self.writer is not None:
                self.writer.shutdown()
                self.writer = None


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


def default_callbacks(state: TrainState, writers: bool = True, console: bool = True) -> list[Callback]:
    """The callbacks of every run, in the order they run.

    Args:
        state: the run, its directory made.
        writers: also the ones that write the run's files (under torchrun, rank 0's alone).
        console: also the progress bar and the epoch lines (a sweep and the bench print their own).
    """
    config = state.config
    callbacks: list[Callback] = [GracefulStop(before_step=state.world.size > 1)]
    if writers:
        log = RunLogger(state.run_dir)
        callbacks += [GradientCheck(log, config.check_grads_every), Checkpoints(), MetricsFile()]
        # the pictures write into the log before TensorBoardLog closes it
        callbacks += [*picture_callbacks(state, log)]
        callbacks += [TensorBoardLog(log, config.histogram_every, config.log_every, config.check_grads_every > 0)]
    if console:
        callbacks.append(ConsoleOutput(config.progress if config.progress is not None else sys.stderr.isatty()))
    return callbacks
