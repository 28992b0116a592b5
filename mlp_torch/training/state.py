"""``TrainState``: one run at one moment. The loop advances it, the callbacks read it, checkpoints hold it.

Everything that decides what happens next (parameters, optimizer buffers, the schedule's step,
the random generators, the position inside the epoch) goes into ``last.pt`` through
:meth:`TrainState.state_dict`, so a resumed run on the CPU continues bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR

from ..data import DataBundle, DeviceBatches, Preprocessor, Split, Standardizer, Whitener
from ..models import Classifier
from .config import TrainConfig
from .distributed import World
from .evaluation import EvalResult
from .resume import note
from .schedule import restore_scheduler


@dataclass
class StepStats:
    """What one step measured: :meth:`gather`-ed on the device, then :meth:`read` in one synchronisation
    (several processes: the whole batch's, see ``loop.all_reduce_step``)."""

    loss: float
    correct: int
    samples: int
    grad_sq: list[float]  # ‖∂ℓ/∂θ‖² of each layer's parameters

    @classmethod
    def measure(cls, model: Classifier, loss: Tensor, logits: Tensor, y: Tensor) -> StepStats:
        """:meth:`gather`, then :meth:`read`: the numbers of a step just taken."""
        return cls.read(cls.gather(model, loss, logits, y), model, len(y))

    @staticmethod
    def gather(model: Classifier, loss: Tensor, logits: Tensor, y: Tensor) -> Tensor:
        """The step's numbers in one float64 tensor on the device, without a sync (a CUDA graph can record it)."""
        labels = y if y.dim() == 1 else y.argmax(1)  # soft targets (--label-smoothing, --mixup): the largest share
        return torch.stack(
            [loss.double(), (logits.argmax(1) == labels).sum().double(), *layers_grad_sq(model, loss.device)]
        )

    @classmethod
    def read(cls, values: Tensor, model: Classifier, samples: int) -> StepStats:
        """The numbers :meth:`gather` put on the device, for a batch of ``samples``.

        ``model``'s ``.grad`` must still be the step's: a norm that overflowed float32 is measured again.
        """
        loss_value, correct, *layer_sq = values.tolist()  # the one sync
        return cls(loss_value, int(correct), samples, finite_grad_sq(model, layer_sq, values.device))


def layer_grad_sq(layer: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``‖∂ℓ/∂θ‖²`` over a layer's parameters (float64), the norms accumulated in ``dtype`` (or the
    gradients' own, if wider: ``--dtype float64``)."""
    norms = [
        torch.linalg.vector_norm(p.grad, dtype=torch.promote_types(p.grad.dtype, dtype))
        for p in layer.parameters()
        if p.grad is not None
    ]
    if not norms:
        return torch.zeros((), dtype=torch.float64, device=device)
    return torch.stack(norms).double().square().sum()


def layers_grad_sq(model: Classifier, device: torch.device) -> list[Tensor]:
    """Each layer's ``‖∂ℓ/∂θ‖²`` (:func:`layer_grad_sq` in float32), 0-dim tensors on ``device``: no sync."""
    return [layer_grad_sq(layer, torch.float32, device) for layer in model.layers]


def finite_grad_sq(model: Classifier, layer_sq: list[float], device: torch.device) -> list[float]:
    """``layer_sq`` as read, except where a norm came out inf: that layer measured again in float64.

    g² overflows float32 beyond |g| ≈ 1.8e19; measuring again (a second sync, only then) makes
    only a gradient that truly is inf or NaN read as one.
    """
    return [
        sq if math.isfinite(sq) else layer_grad_sq(layer, torch.float64, device).item()
        for sq, layer in zip(layer_sq, model.layers)
    ]


@dataclass
class EpochProgress:
    """Where an epoch stands: its sample order and running sums, enough to stop after any step and continue."""

    order: Tensor
    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    grad_norm_sums: list[float] = field(default_factory=list)  # Σ over steps of ‖∂ℓ/∂θ‖, per layer

    def add(self, stats: StepStats) -> None:
        """Count one more step."""
        self.step += 1
        self.loss_sum += stats.loss * stats.samples
        self.correct += stats.correct
        self.seen += stats.samples
        for i, sq in enumerate(stats.grad_sq):
            self.grad_norm_sums[i] += math.sqrt(sq)

    def state(self) -> dict[str, Any]:
        return {
            "order": self.order.cpu(),
            "step": self.step,
            "loss_sum": self.loss_sum,
            "correct": self.correct,
            "seen": self.seen,
            "grad_norm_sums": list(self.grad_norm_sums),
        }


def no_best() -> dict[str, Any]:
    return {"val_balanced_accuracy": -1.0, "val_accuracy": float("nan"), "epoch": 0}


@dataclass(eq=False)  # holds tensors and a model: compared by identity
class TrainState:
    """A run: what it trains, where it stands, and what its latest step and epoch gave.

    Callbacks read it; the only fields they write are ``should_stop`` and ``signal``.
    """

    # what is trained, and on what
    config: TrainConfig
    device: torch.device
    data: DataBundle  # the three splits, CPU uint8
    standardizer: Preprocessor  # the Standardizer, or the Whitener (--whiten zca) that holds it
    model: Classifier
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    batches: DeviceBatches  # the training split on the device: shuffled, augmented, preprocessed
    val: Split  # the validation split on the device (empty without one)
    class_weight: Tensor | None  # --balance weights
    world: World = field(default_factory=World)  # the processes training the run together (torchrun); one by default
    # (x, y) -> StepStats: zero_grad, the backend's gradients and the step's numbers (the one sync), up to the
    # optimizer; chosen once (loop.choose_gradient_step): eager, replayed from a CUDA graph, or all-reduced
    gradient_step: Callable[[Tensor, Tensor], StepStats] = field(init=False)
    run_dir: Path = field(init=False)  # set once the run directory exists
    # where the run stands (all of it in last.pt)
    epoch: int = 0  # complete epochs
    global_step: int = 0  # optimizer steps taken
    progress: EpochProgress | None = None  # the epoch under way; None between epochs
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    best: dict[str, Any] = field(default_factory=no_best)  # the epoch best.pt holds
    best_weights: dict[str, Tensor] | None = None  # its parameters, once an epoch of this process was best
    train_seconds: float = 0.0
    # the latest step and epoch, for callbacks
    batch: tuple[Tensor, Tensor] | None = None  # (x, y) of the step under way: this process's rows of it
    step_stats: StepStats | None = None  # of the latest step
    lr: float = float("nan")  # the learning rate of the latest step
    val_result: EvalResult | None = None  # the latest epoch's validation (None without a validation split)
    grad_norms: list[float] = field(default_factory=list)  # the latest epoch's mean ‖∂ℓ/∂θ‖ per layer
    improved: bool = False  # the latest epoch is the best so far
    # how it ends
    should_stop: bool = False  # set by a callback: finish the step under way, save last.pt, stop
    signal: str | None = None  # the signal that asked for the stop, if one did
    test_result: EvalResult | None = None  # the best checkpoint on the test split, once completed
    final_metrics: dict[str, Any] = field(default_factory=dict)  # metrics.json at the end (None for NaN)

    @property
    def has_val(self) -> bool:
        return len(self.val) > 0

    @property
    def base_standardizer(self) -> Standardizer:
        """The per-pixel standardiser (the whitener's first step, when there is one)."""
        pre = self.standardizer
        return pre.standardizer if isinstance(pre, Whitener) else pre

    @property
    def completed(self) -> bool:
        return self.epoch >= self.config.epochs

    def metrics(self, **outcome: Any) -> dict[str, Any]:
        """``metrics.json``: the run so far, then ``outcome`` (its status and, once completed, the test split)."""
        return {
            "epochs": self.epoch,
            "best_epoch": self.best["epoch"],
            "best_val_accuracy": self.best["val_accuracy"],
            "best_val_balanced_accuracy": self.best["val_balanced_accuracy"] if self.best["epoch"] else float("nan"),
            "train_seconds": self.train_seconds,
            "classes": self.data.classes,
            "run_dir": str(self.run_dir),
            "selected_by": "val_balanced_accuracy" if self.has_val else "last_epoch",
            "history": self.history,
            **outcome,
        }

    def state_dict(self) -> dict[str, Any]:
        """A checkpoint: the model and what ``predict`` needs, and all that a resume needs."""
        return {
            "model_config": self.model.config(),
            "model_state": self.model.state_dict(),
            "classes": self.data.classes,
            "image_size": self.data.image_size,
            "standardizer": self.base_standardizer.state_dict(),
            **({"whitener": self.standardizer.state_dict()} if isinstance(self.standardizer, Whitener) else {}),
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "epoch_progress": None if self.progress is None else self.progress.state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "data": self.batches.generator.get_state(),
                "data_device": self.device.type,
                "torch": torch.get_rng_state(),
            },
            "best": dict(self.best),
            "history": self.history,
            "train_seconds": self.train_seconds,
            "data_fingerprint": self.data.fingerprint(),
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Continue where ``ckpt`` (a :meth:`state_dict`) stopped, on the schedule of this config's epochs.

        The preprocessing is not loaded here: the batches are cut from images it made, so the state
        is built with it (``new_state(..., preprocess=preprocessor_from_state(...))``, as ``start_run`` does).
        """
        self.model.load_state_dict(ckpt["model_state"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        restore_scheduler(self.scheduler, ckpt["scheduler"])
        generator = self.batches.generator
        if ckpt["rng"].get("data_device", "cpu") == self.device.type:
            generator.set_state(ckpt["rng"]["data"])
        else:  # a CPU generator's state means nothing to a CUDA one: continue, but not bit for bit
            generator.manual_seed((self.config.seed + ckpt["global_step"]) % 2**64)
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
