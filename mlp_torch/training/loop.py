"""The training loop, as pytorch/examples' mnist ``train()`` reads, with callbacks around it.

For each batch: zero the gradients, compute them with the model's backend, check that they are
finite, step the optimizer and the schedule. With ``--cuda-graphs`` the first two are replayed
from a CUDA graph for every full batch (:mod:`mlp_torch.training.cuda_graph`, one process only);
the rest is the same. Around that, callbacks (:class:`Callback`) do everything else, each on the events it needs,
in the order of their list:

    on_train_start
        on_epoch_start
            on_step_start   (state.batch is the step's batch)
            on_step_end     (state.step_stats holds what the step measured)
        on_epoch_end        (state.history[-1], state.val_result, state.improved)
    on_train_end            (state.final_metrics), or on_failure(state, error) when anything raises

A callback stops the run by setting ``state.should_stop``: the step under way finishes, ``last.pt``
is saved with the position inside the epoch, and the run ends ``interrupted``.

With several processes (``torchrun``, :mod:`mlp_torch.training.distributed`) each computes the
gradient of its rows of the batch (``state.batch``), and :func:`all_reduce_step` makes every
``.grad`` the whole batch's before the optimizer steps; every number callbacks read is then the
same on every process. A stop asked for before the step's all-reduce is every process's.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from ..data.targets import mixup, smooth_labels
from ..errors import DivergenceError
from .cuda_graph import GraphedGradients, eager_gradients, uses_cuda_graphs
from .distributed import evaluate_sharded
from .interrupt import SIGNALS
from .state import EpochProgress, StepStats, TrainState, finite_grad_sq, layers_grad_sq


class Callback:
    """Hooks around the loop; subclasses override the events they need.

    They read the :class:`TrainState` and write only ``state.should_stop`` (and ``state.signal``).
    ``on_failure`` runs instead of ``on_train_end`` when anything raises, the error then goes on
    up; it must not raise itself.

    With several processes each runs its own callbacks (the file writers on rank 0 only), on the
    same numbers: a stop decided from them is decided alike everywhere. A stop from anything a
    process sees alone (a signal) must be asked for in ``on_step_start``, before the step's
    all-reduce shares it (as :class:`~mlp_torch.training.callbacks.GracefulStop` does).
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


def choose_gradient_step(state: TrainState) -> Callable[[Tensor, Tensor], StepStats]:
    """``state.gradient_step``, chosen once: ``(x, y) ->`` the step's numbers, after ``zero_grad`` and the gradients.

    One process: the backend's gradients, eagerly or (``--cuda-graphs``) replayed from a CUDA graph
    for every full batch; several: this process's rows' gradients, then :func:`all_reduce_step`.
    """
    model, class_weight = state.model, state.class_weight
    if state.world.size > 1:

        def all_reduced(x: Tensor, y: Tensor) -> StepStats:
            model.zero_grad(set_to_none=True)
            loss, logits = model.compute_gradients(x, y, class_weight=class_weight)
            return all_reduce_step(state, loss, logits, y)  # the whole batch's gradient; the one sync

        return all_reduced
    if uses_cuda_graphs(state.config.cuda_graphs, state.device):
        return GraphedGradients(model, class_weight, state.config.batch_size)
    return eager_gradients(model, class_weight)


def train_one_epoch(state: TrainState, callbacks: Callback) -> bool:
    """Train the rest of the current epoch; ``False`` if a callback stopped it part-way.

    Raises:
        DivergenceError: a non-finite loss or gradient, or an update beyond float32, before the
            optimizer steps (the parameters stay as the last step left them).
    """
    progress, optimizer = state.progress, state.optimizer
    assert progress is not None, "start_epoch first"
    while progress.step < len(state.batches):
        x, y = state.batches.batch(progress.order, progress.step)  # this process's rows of it
        x, target = training_targets(state, x, y)
        state.batch = (x, target)
        callbacks.on_step_start(state)
        stats = state.gradient_step(x, target)  # zero_grad, the backend's gradients, their numbers: the one sync
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
        evaluate_sharded(state.world, state.model, state.val.x, state.val.y, state.standardizer)
        if state.has_val
        else None
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


def all_reduce_step(state: TrainState, loss: Tensor, logits: Tensor, y: Tensor) -> StepStats:
    """Several processes: every ``.grad`` becomes the whole batch's gradient; the step's numbers and stop are agreed.

    Each ``.grad`` holds the mean gradient of this process's rows ``y``, weighted ``W_r`` (their
    count, or ``Σ w_{y_n}`` with class weights). :meth:`World.all_reduce_gradients` sums
    ``W_r g_r`` and ``W_r`` (so ``.grad = Σ_r W_r g_r / W``, see :mod:`.distributed`) and, in the
    same collective, the rows' loss sums ``W_r ℓ_r``, correct predictions and counts, and every
    process's stop request with its signal: afterwards ``state.should_stop`` and ``state.signal``
    are the same on every process, which then all stop after this step.
    """
    world, model, class_weight = state.world, state.model, state.class_weight
    dtype = loss.dtype
    # made on the device, or copied there without waiting: the step's one sync stays the .tolist() below
    if class_weight is not None:
        weight = class_weight[y].sum().to(dtype)
    else:
        weight = torch.full((), len(y), dtype=dtype, device=loss.device)
    requests = [float(state.should_stop), *(float(state.signal == signal.Signals(s).name) for s in SIGNALS)]
    local = torch.cat(
        [
            torch.stack([weight * loss if len(y) else weight * 0, (logits.argmax(1) == y).sum().to(dtype)]),
            torch.tensor([len(y), *requests], dtype=dtype).to(loss.device, non_blocking=True),
        ]
    )
    total, sums = world.all_reduce_gradients(model.parameters(), weight, local)
    grad_sq = torch.stack(layers_grad_sq(model, loss.device))  # of the whole batch's gradient, the same everywhere
    values = torch.cat([total.double().reshape(1), sums.double(), grad_sq]).tolist()
    total_weight, loss_sum, correct, samples, stop, *rest = values  # the one sync
    asked, layer_sq = rest[: len(SIGNALS)], rest[len(SIGNALS) :]
    state.should_stop = stop > 0
    if state.signal is None:
        state.signal = next((signal.Signals(s).name for s, n in zip(SIGNALS, asked) if n > 0), None)
    return StepStats(
        loss_sum / total_weight, round(correct), round(samples), finite_grad_sq(model, layer_sq, loss.device)
    )


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
