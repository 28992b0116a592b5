"""The optimizer (the lecture's SGD, optionally with momentum / Nesterov / weight decay, or Adam)
and a per-step learning-rate schedule: linear warm-up, then constant, step decay or cosine.

    warm-up   η_t = η · (t + 1) / T_w                      for t < T_w steps
    constant  η_t = η
    step      η_t = η · γ^⌊epoch / step_size⌋
    cosine    η_t = η · ½ (1 + cos(π · (t − T_w) / (T − T_w)))

T is the total number of steps of ``--epochs``. The schedule is a function of the config and the
step count alone: a resumed run rebuilds it from its config, so ``--resume --epochs N`` with a new
N re-stretches the cosine over the new total and continues from the current step on that curve
(warm-up, long over, is not repeated): from then on the run follows the curve of a run planned for
N epochs from the start.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..optim import SGD
from .config import TrainConfig


def build_optimizer(config: TrainConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Our SGD (``w ← w − η ∂ℓ/∂w``, with momentum/Nesterov/weight decay as configured; see
    :mod:`mlp_torch.optim`) or ``torch.optim.Adam``."""
    assert config.lr is not None, "TrainConfig resolves lr in __post_init__"
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )


class LRFactor:
    """The schedule's multiplier of ``--lr`` at optimizer step ``t`` (a picklable callable)."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        self.schedule = config.schedule
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.total = config.epochs * self.steps_per_epoch
        self.warmup = min(round(config.warmup_epochs * self.steps_per_epoch), self.total)
        self.step_size = config.step_size
        self.gamma = config.gamma

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return (t + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "step":
            return self.gamma ** (t // (self.step_size * self.steps_per_epoch))
        progress = (t - self.warmup) / max(self.total - self.warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> LambdaLR:
    """A scheduler stepped once per optimizer step; its state is just the step count."""
    return LambdaLR(optimizer, LRFactor(config, steps_per_epoch))


def restore_scheduler(scheduler: LambdaLR, state: dict[str, Any]) -> None:
    """Load a saved scheduler's step count, keeping the schedule ``scheduler`` was built with.

    ``LambdaLR.state_dict`` also saves its :class:`LRFactor`'s fields, the old total among them;
    restored as they are, a run resumed with more epochs would keep the old curve and train its new
    epochs at η = 0. So the fields built from the current config are put back, and the optimizer's
    learning rate is set to the current curve's value at the saved step (bit for bit what the saved
    run had when the total is unchanged).

    Args:
        scheduler: from :func:`build_scheduler`, its optimizer's state already loaded.
        state: ``scheduler.state_dict()`` of the saved run.
    """
    factors = [vars(f).copy() for f in scheduler.lr_lambdas]
    scheduler.load_state_dict(state)
    for f, fields in zip(scheduler.lr_lambdas, factors):
        vars(f).clear()
        vars(f).update(fields)
    for group, base, f in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * f(scheduler.last_epoch)
