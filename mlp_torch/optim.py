"""The lecture's SGD update, written out, with the refinements the trainer offers.

For every parameter ``w`` with gradient ``g = ∂ℓ/∂w``, learning rate ``η``, momentum ``μ``,
dampening ``τ`` and weight decay ``λ`` (the definitions of ``torch.optim.SGD``):

    g ← g + λ w                       weight decay: the gradient of ℓ + (λ/2) ‖w‖²
    b ← μ b + (1 − τ) g               momentum buffer; on the first step b ← g
    g ← g + μ b    (Nesterov)         look ahead along the buffer
    g ← b          (otherwise)
    w ← w − η g                       the lecture's step  w ← w − η ∂ℓ/∂w

With ``μ = λ = 0`` only the last line remains. :func:`sgd_step` applies it to one parameter;
:class:`SGD` is a ``torch.optim.Optimizer`` whose ``step()`` calls it, so learning-rate schedulers,
``state_dict()`` and checkpoints work as with ``torch.optim.SGD`` (the state is the same
``momentum_buffer`` per parameter, so either optimizer loads the other's state).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, overload

import torch
from torch import Tensor

__all__ = ["SGD", "sgd_step"]


def sgd_step(
    w: Tensor,
    g: Tensor,
    b: Tensor | None,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    work: Tensor | None = None,
) -> Tensor | None:
    """Update ``w`` in place by one SGD step (module docstring); ``g`` is not modified.

    The same operations in the same order as ``torch.optim.SGD``'s single-tensor path, so the
    results are bitwise equal to it.

    Args:
        w: the parameter, updated in place.
        g: its gradient ``∂ℓ/∂w``.
        b: the momentum buffer from the previous step, ``None`` on the first (or without momentum).
        lr: learning rate ``η``.
        momentum: ``μ``; 0 is plain SGD.
        dampening: ``τ``.
        nesterov: use Nesterov momentum (needs ``μ > 0`` and ``τ = 0``).
        weight_decay: ``λ``.
        work: a tensor shaped like ``w`` that the step may overwrite, for the modified gradient of
            weight decay and Nesterov: with it the step allocates nothing (:class:`SGD` keeps one
            per parameter); without, those lines make a new tensor each.

    Returns:
        The momentum buffer to pass to the next step (``None`` without momentum).
    """
    if weight_decay != 0:
        g = torch.add(g, w, alpha=weight_decay, out=work)  # g ← g + λ w
    if momentum != 0:
        if b is None:
            b = g.clone()  # b ← g on the first step
        else:
            b.mul_(momentum).add_(g, alpha=1 - dampening)  # b ← μ b + (1 − τ) g
        g = torch.add(g, b, alpha=momentum, out=work) if nesterov else b  # g ← g + μ b (Nesterov), else g ← b
    w.add_(g, alpha=-lr)  # w ← w − η g
    return b


class SGD(torch.optim.Optimizer):
    """Stochastic gradient descent whose ``step()`` is :func:`sgd_step` on every parameter.

    Args:
        params: parameters (or parameter groups) to optimise.
        lr: learning rate ``η``.
        momentum: ``μ`` (default 0: plain SGD).
        dampening: ``τ`` (default 0).
        weight_decay: ``λ`` (default 0).
        nesterov: Nesterov momentum (default False).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        if momentum < 0.0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening 0")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
        }
        super().__init__(params, defaults)
        # sgd_step's scratch per parameter, so that a step allocates nothing: not state, never saved
        self._work: dict[Tensor, Tensor] = {}

    # A large parameter on a CPU is stepped a block of this many elements at a time: the scratch for
    # the modified gradient is then one block that stays in cache, not a fourth parameter-sized tensor
    # beside w, ∂ℓ/∂w and b. For the default MLP's 3072x512 layer on the 2-core machine that is
    # ≈ 0.4 ms of ≈ 1.2 ms a step. A multiple of 64, so every element takes the same (vectorised or
    # not) path through each op as in one whole-tensor op: the same bits. On a GPU every op is a
    # kernel launch, so whole tensors there.
    block_elements = 1 << 17

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One :func:`sgd_step` for every parameter that has a gradient (large ones on a CPU block by block).

        Args:
            closure: optionally re-evaluates the model and returns the loss (as in ``torch.optim``).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            hyper = {k: group[k] for k in ("lr", "momentum", "dampening", "nesterov", "weight_decay")}
            with_momentum = group["momentum"] != 0
            needs_work = group["weight_decay"] != 0 or group["nesterov"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                # with momentum, the state holds its buffer (as torch.optim.SGD's does)
                b = self.state[w].get("momentum_buffer") if with_momentum else None
                if b is not None and self._in_blocks(w, w.grad, b):
                    n = self.block_elements
                    work = self._work_for(w, n) if needs_work else None
                    for wi, gi, bi in zip(w.view(-1).split(n), w.grad.view(-1).split(n), b.view(-1).split(n)):
                        sgd_step(wi, gi, bi, work=None if work is None else work[: len(wi)], **hyper)  # b in place
                    continue
                work = self._work_for(w, w.numel()).view_as(w) if needs_work else None
                b = sgd_step(w, w.grad, b, work=work, **hyper)
                if with_momentum:
                    self.state[w]["momentum_buffer"] = b
        return loss

    def _in_blocks(self, w: Tensor, g: Tensor, b: Tensor) -> bool:
        """Whether ``w`` is stepped block by block: larger than a block, on a CPU, all three alike and flat in memory.

        (A buffer of another shape takes the whole-tensor step, which refuses it as torch's does.)
        """
        flat = all(t.is_contiguous() and t.shape == w.shape for t in (g, b)) and w.is_contiguous()
        return w.device.type == "cpu" and w.numel() > self.block_elements and flat

    def _work_for(self, w: Tensor, numel: int) -> Tensor:
        """``w``'s flat scratch of ``numel`` elements (made on first use, again if the size, type or device changed)."""
        work = self._work.get(w)
        if work is None or work.numel() != numel or work.dtype != w.dtype or work.device != w.device:
            work = self._work[w] = torch.empty(numel, dtype=w.dtype, device=w.device)
        return work
