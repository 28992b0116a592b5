"""The training loop, as pytorch/examples' mnist ``train()`` reads, with callbacks around it.

For each batch: zero the gradients, compute them with the model's backend, check that they are
finite, step the optimizer and the schedule. Around that, callbacks (:class:`Callback`) do
everything else, each on the events it needs, in the order of their list:

    on_train_start
        on_epoch_start
            on_step_start   (state.batch is the step's batch)
            on_step_end     (state.step_stats holds what the step measured)
        on_epoch_end        (state.history[-1], state.val_result, state.improved)
    on_train_end            (state.final_metrics), or on_failure(state, error) when anything raises

A callback stops the run by setting ``state.should_stop``: the step under way finishes, ``last.pt``
is saved with the position inside the epoch, and the run ends ``interrupted``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import Tensor

from ..data.targets import mixup, smooth_labels
from ..errors import DivergenceError
from .evaluation import evaluate
from .state import EpochProgress, StepStats, TrainState


class Callback:
    """Hooks around the loop; subclasses override the events they need.

    They read the :class:`TrainState` and write only ``state.should_stop`` (and ``state.signal``).
    ``on_failure`` runs instead of ``on_train_end`` when anything raises, the error then goes on
    up; it must not raise itself.
    """

    def on_train_start(self, state: TrainState) -> None: ...

    def on_epoch_start(self, state: TrainState) -> None: ...

    def on_step_start(self, state: TrainState) -> None: ...

    def on_step_end(self, state: TrainState) -> None: ...

    def on_epoch_end(self, state: TrainState) -> None: ...

    def on_train_end(self, state: TrainState) -> None: ...

    def on_failure(self, state: TrainState, error: BaseException) -> None: ...


class CallbackList(Callback):
    """Callbacks called in list order for every event."""

    def __init__(self, callbacks: Iterable[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_train_start(self, state: TrainState) -> None:
        for callback in self.callbacks:
            callback.on_train_start(state)

    def on_epoch_start(self, state: TrainState) -> None:
        for callback in self.callbacks:
            callback.on_epoch_start(state)

    def on_step_start(self, state: TrainState) -> None:
        for callback in self.callbacks:
            callback.on_step_start(state)

    def on_step_end(self, state: TrainState) -> None:
        for callback in self.callbacks:
            callback.on_step_end(state)

    def on_epoch_end(self, state: TrainState) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(state)

    def on_train_end(self, state: TrainState) -> None:
        for callback in self.callbacks:
            callback.on_train_end(state)

    def on_failure(self, state: TrainState, error: BaseException) -> None:
        for callback in self.callbacks:
            callback.on_failure(state, error)


def start_epoch(state: TrainState) -> None:
    """Draw the next epoch's sample order, unless an epoch is under way (a resumed one continues)."""
    if state.progress is None:
        state.progress = EpochProgress(state.batches.epoch_order(), grad_norm_sums=[0.0] * len(state.model.layers))


def train_one_epoch(state: TrainState, callbacks: Callback) -> bool:
    """Train the rest of the current epoch; ``False`` if a callback stopped it part-way.

    Raises:
        DivergenceError: a non-finite loss or gradient, or an update beyond float32, before the
            optimizer steps (the parameters stay as the last step left them).
    """
    progress, model, optimizer = state.progress, state.model, state.optimizer
    assert progress is not None, "start_epoch first"
    while progress.step < len(state.batches):
        x, y = state.batches.batch(progress.order, progress.step)
        x, target = training_targets(state, x, y)
        state.batch = (x, target)
        callbacks.on_step_start(state)
        optimizer.zero_grad(set_to_none=True)
        loss, logits = model.compute_gradients(x, target, class_weight=state.class_weight)
        stats = StepStats.measure(model, loss, logits, y)  # the one sync per step; accuracy against y
        check_finite(state, stats)
        state.lr = optimizer.param_groups[0]["lr"]
        step_optimizer(state)
        state.scheduler.step()
        state.global_step += 1
        progress.add(stats)
        state.step_stats = stats
        callbacks.on_step_end(state)
        if state.should_stop and progress.step < len(state.batches):
            return False
    return True


def training_targets(state: TrainState, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The step's inputs and targets: the class labels ``y``, or soft targets with ``--label-smoothing``/``--mixup``.

    With both off nothing is drawn or changed: the lecture's loss ``ℓ = −log ŷ_y`` on the batch as it came.
    """
    config = state.config
    if not config.label_smoothing and not config.mixup:
        return x, y
    t = smooth_labels(y, state.data.num_classes, config.label_smoothing, x.dtype)  # N,C
    if config.mixup:
        x, t = mixup(x, t, config.mixup, state.batches.generator)
    return x, t


def finish_epoch(state: TrainState) -> None:
    """Count the epoch, validate, record it in the history, and note whether it is the best so far.

    Without a validation split every epoch is "the best so far": the last one is kept.
    """
    progress = state.progress
    assert progress is not None, "train_one_epoch first"
    state.epoch += 1
    state.val_result = val = (
        evaluate(state.model, state.val.x, state.val.y, state.standardizer) if state.has_val else None
    )
    nan = float("nan")
    state.grad_norms = [s / max(len(state.batches), 1) for s in progress.grad_norm_sums]
    state.history.append(
        {
            "epoch": state.epoch,
            "train_loss": progress.loss_sum / max(progress.seen, 1),
            "train_accuracy": progress.correct / max(progress.seen, 1),
            "val_loss": nan if val is None else val.loss,
            "val_accuracy": nan if val is None else val.accuracy,
            "val_balanced_accuracy": nan if val is None else val.balanced_accuracy,
            "lr": state.lr,  # of the epoch's last step (the scheduler has already moved on)
            "seconds": state.train_seconds,
            "grad_norm": state.grad_norms,  # per layer, the mean over the epoch's steps
        }
    )
    state.progress = None
    state.improved = val is None or val.balanced_accuracy > state.best["val_balanced_accuracy"]
    if state.improved:
        record = state.history[-1]
        state.best = {
            "val_balanced_accuracy": record["val_balanced_accuracy"],
            "val_accuracy": record["val_accuracy"],
            "epoch": state.epoch,
        }
        state.best_weights = {name: t.detach().clone() for name, t in state.model.state_dict().items()}


def check_finite(state: TrainState, stats: StepStats) -> None:
    """Raise :class:`DivergenceError` if the step's loss or any layer's gradient is not finite."""
    bad = [f"the loss is {stats.loss}"] if not math.isfinite(stats.loss) else []
    bad += [
        f"the gradient of layer{i} has norm {math.sqrt(sq) if sq >= 0 else sq}"
        for i, sq in enumerate(stats.grad_sq)
        if not math.isfinite(sq)
    ]
    if bad:
        raise diverged(state, bad)


def step_optimizer(state: TrainState) -> None:
    """``optimizer.step()``; an update beyond float32 is a divergence, not a crash."""
    try:
        state.optimizer.step()
    except RuntimeError as err:  # η·update beyond float32 ("value cannot be converted ...")
        if "overflow" not in str(err):
            raise
        raise diverged(state, [f"the update overflows float32 (lr {state.lr:g})"]) from None


def diverged(state: TrainState, reasons: list[str]) -> DivergenceError:
    """The error for the step under way: where it happened, why, and what to do."""
    assert state.progress is not None
    last = state.run_dir / "checkpoints" / "last.pt"
    kept = f"; the last good checkpoint {last} is unchanged" if last.exists() else ""
    return DivergenceError(
        f"training diverged at epoch {state.epoch + 1}, step {state.progress.step + 1} "
        f"(global step {state.global_step + 1}): {' and '.join(reasons)}. "
        f"Lower the learning rate (--lr {state.config.lr:g} now) or add warm-up{kept}"
    )
