"""What every classifier shares: the ``backend`` switch and ``compute_gradients``.

The three gradient paths hold the same parameters (``layers.{i}.weight`` (out, in) and
``layers.{i}.bias`` (out,)), so a state_dict from one loads into the others:

- ``builtin``: PyTorch's own ops (``F.linear``, ``torch.sigmoid``, ``F.cross_entropy``) and autograd;
- ``custom``: our ``torch.autograd.Function``s from :mod:`mlp_torch.functional`, chained by autograd;
- ``manual``: no autograd; a forward that keeps a cache and a hand-written backward
  (:mod:`mlp_torch.models.manual`) that fills each parameter's ``.grad``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, overload

import torch
from torch import Tensor, nn

from ..errors import UsageError

BACKENDS: tuple[str, ...] = ("builtin", "custom", "manual")


def check_choice(kind: str, value: str, allowed: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise a UsageError that lists them."""
    if value not in allowed:
        raise UsageError(f"unknown {kind} {value!r}; choose one of: {', '.join(allowed)}")
    return value


def check_size(name: str, value: int) -> int:
    """Layer sizes must be positive integers."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return value


class DenseLayers(nn.ModuleList):
    """An ``nn.ModuleList`` of ``nn.Linear`` layers, typed as such (``layers[i].weight`` is a Tensor)."""

    def __init__(self, layers: Iterable[nn.Linear]) -> None:
        super().__init__(layers)

    if TYPE_CHECKING:

        @overload
        def __getitem__(self, idx: slice) -> DenseLayers: ...

        @overload
        def __getitem__(self, idx: int) -> nn.Linear: ...

        def __getitem__(self, idx: int | slice) -> nn.Linear | DenseLayers: ...

        def __iter__(self) -> Iterator[nn.Linear]: ...


class Classifier(nn.Module):
    """Base class: a stack of dense ``layers`` and a loss, with three interchangeable gradient paths.

    Subclasses implement the autograd forward (``_forward``, builtin or custom ops) and its loss
    (``_loss``; ``_logits_and_loss`` may fuse the two), and the manual path (``_manual_forward``
    returning the logits and a cache of what backward needs, ``_manual_loss`` returning ℓ and
    dℓ/dlogits, ``_manual_backward`` filling ``.grad``).
    """

    kind: str = ""
    layers: DenseLayers

    def __init__(self, backend: str = "builtin") -> None:
        super().__init__()
        self.backend = backend

    @property
    def backend(self) -> str:
        """Which gradient path ``forward`` and ``compute_gradients`` use; settable at any time."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = check_choice("backend", value, BACKENDS)

    def config(self) -> dict[str, Any]:
        """Plain JSON-able kwargs such that ``build_model(**model.config())`` rebuilds this model."""
        raise NotImplementedError

    # ------------------------------------------------------------------ public API

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, C) for inputs x (N, in_features), computed with ``self.backend``.

        With ``manual`` nothing is recorded for autograd (the result does not require grad).
        """
        if self.backend == "manual":
            with torch.no_grad():
                return self._manual_forward(x)[0]
        return self._forward(x, custom=self.backend == "custom")

    def loss(self, x: Tensor, target: Tensor, class_weight: Tensor | None = None, backend: str | None = None) -> Tensor:
        """The training loss (mean over the batch) at the current parameters, without backward."""
        backend = check_choice("backend", backend or self.backend, BACKENDS)
        if backend == "manual":
            with torch.no_grad():
                logits, _ = self._manual_forward(x)
                return self._manual_loss(logits, target, class_weight)[0]
        return self._logits_and_loss(x, target, class_weight, custom=backend == "custom")[1]

    def loss_from_logits(
        self, logits: Tensor, target: Tensor, class_weight: Tensor | None = None, backend: str | None = None
    ) -> Tensor:
        """The training loss (mean over the batch) of logits that ``forward`` already computed, without backward."""
        backend = check_choice("backend", backend or self.backend, BACKENDS)
        if backend == "manual":
            with torch.no_grad():
                return self._manual_loss(logits, target, class_weight)[0]
        return self._loss(logits, target, class_weight, custom=backend == "custom")

    def compute_gradients(
        self, x: Tensor, target: Tensor, class_weight: Tensor | None = None, backend: str | None = None
    ) -> tuple[Tensor, Tensor]:
        """Forward and backward with one backend; gradients are *added* into each ``.grad``.

        Behaves like ``loss = ...; loss.backward()``: call ``optimizer.zero_grad()`` before and
        ``optimizer.step()`` after. Works under ``torch.no_grad()`` for every backend.

        Args:
            x: (N, in_features) float inputs.
            target: (N,) int64 class indices (or (N, C) probability rows for softmax models).
            class_weight: optional (C,) weights with ``F.cross_entropy(weight=...)`` semantics.
            backend: ``builtin``, ``custom`` or ``manual``; default ``self.backend``.

        Returns:
            The detached scalar loss and the detached logits (N, C).
        """
        backend = check_choice("backend", backend or self.backend, BACKENDS)
        if backend == "manual":
            with torch.no_grad():
                logits, cache = self._manual_forward(x)
                loss, dlogits = self._manual_loss(logits, target, class_weight)
                self._manual_backward(cache, dlogits)
            return loss, logits
        with torch.enable_grad():
            logits, loss = self._logits_and_loss(x, target, class_weight, custom=backend == "custom")
            loss.backward()
        return loss.detach(), logits.detach()

    def hidden_activations(self, x: Tensor) -> list[Tensor]:
        """Post-activation output of each hidden layer (no grad); ``[]`` without hidden layers."""
        return []

    def kink_pattern(self, x: Tensor) -> Tensor | None:
        """Which side of each kink the batch is on (``None`` for a smooth model).

        The loss is differentiable in a neighbourhood where this pattern stays the same; finite
        differences compare it at θ ± h to tell a kink crossing from a wrong gradient.
        """
        return None

    # ------------------------------------------------------------------ implemented by subclasses

    def _forward(self, x: Tensor, custom: bool) -> Tensor:
        raise NotImplementedError

    def _logits_and_loss(
        self, x: Tensor, target: Tensor, class_weight: Tensor | None, custom: bool
    ) -> tuple[Tensor, Tensor]:
        """The autograd path's logits and loss; a model may fuse its last layer with the loss here."""
        logits = self._forward(x, custom=custom)
        return logits, self._loss(logits, target, class_weight, custom=custom)

    def _loss(self, logits: Tensor, target: Tensor, class_weight: Tensor | None, custom: bool) -> Tensor:
        raise NotImplementedError

    def _manual_forward(self, x: Tensor) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def _manual_loss(self, logits: Tensor, target: Tensor, class_weight: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _manual_backward(self, cache: Any, dlogits: Tensor) -> None:
        raise NotImplementedError
