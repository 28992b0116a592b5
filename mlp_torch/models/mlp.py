"""The lecture's N-layer MLP and its zero-hidden-layer case, the linear softmax classifier.

    h⁰ = x,   aˡ = hˡ⁻¹ Wˡᵀ + bˡ,   hˡ = f(aˡ)  for l = 1 … L−1,   a = hᴸ⁻¹ Wᴸᵀ + bᴸ,   ŷ = softmax(a)
    ℓ = −log ŷ_y            (cross-entropy, averaged over the batch)

Initialisation (biases 0): Xavier/Glorot uniform for sigmoid and tanh hidden layers,
``U(−g √(6 / (fan_in + fan_out)), +…)`` with gain g = 1 (sigmoid) or 5/3 (tanh), which keeps the
variance of activations and gradients roughly constant through a layer of a saturating unit;
He/Kaiming normal ``N(0, 2 / fan_in)`` for ReLU, which compensates for ReLU zeroing half its
inputs; Xavier with g = 1 for the output layer. ``seed`` makes it reproducible without touching
the global generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as MF
from . import manual
from .activations import ACTIVATION_TABLE, ACTIVATIONS, Activation
from .base import Classifier, DenseLayers, check_choice, check_size

__all__ = ["ACTIVATIONS", "MLP", "LinearSoftmax", "init_dense"]

MLPCache = tuple[list[manual.LinearCache], list[Tensor]]  # per layer (x, W); per hidden layer h


def init_dense(layer: nn.Linear, scheme: str, generator: torch.Generator | None) -> None:
    """Initialise one dense layer in place: ``xavier`` (gain 1), ``xavier_tanh`` (gain 5/3) or ``he``."""
    fan_out, fan_in = layer.weight.shape
    with torch.no_grad():
        if scheme == "he":
            layer.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
        else:
            gain = 5.0 / 3.0 if scheme == "xavier_tanh" else 1.0
            bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
            layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.zero_()


class MLP(Classifier):
    """Multi-layer perceptron ``in_features → hidden[0] → … → num_classes`` with softmax cross-entropy.

    Args:
        in_features: inputs per sample (3·H·W for images).
        hidden: sizes of the hidden layers, any depth; ``[]`` is the linear softmax classifier.
        num_classes: number of classes C.
        activation: hidden-layer non-linearity, one of ``sigmoid``, ``tanh``, ``relu``.
        backend: gradient path, one of ``builtin``, ``custom``, ``manual`` (settable later).
        seed: seed for the initialisation; ``None`` draws from the global generator.
    """

    kind = "mlp"

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        num_classes: int,
        activation: str = "sigmoid",
        backend: str = "builtin",
        seed: int | None = None,
    ) -> None:
        super().__init__(backend)
        self.in_features = check_size("in_features", in_features)
        self.num_classes = check_size("num_classes", num_classes)
        self.hidden = [check_size("hidden layer size", h) for h in hidden]
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.seed = seed
        sizes = [self.in_features, *self.hidden, self.num_classes]
        self.layers = DenseLayers(nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:]))
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        hidden_scheme = self.f.init
        for i, layer in enumerate(self.layers):
            init_dense(layer, "xavier" if i == len(self.layers) - 1 else hidden_scheme, generator)

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "in_features": self.in_features,
            "num_classes": self.num_classes,
            "hidden": list(self.hidden),
            "activation": self.activation,
            "backend": self.backend,
            "seed": self.seed,
        }

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, backend={self.backend!r}"

    @property
    def f(self) -> Activation:
        """The hidden layers' activation: its builtin op, custom Function and manual pair."""
        return ACTIVATION_TABLE[self.activation]

    def hidden_activations(self, x: Tensor) -> list[Tensor]:
        with torch.no_grad():
            out = []
            h = x
            *hidden, _ = self.layers
            for layer in hidden:
                h = self.f.builtin(F.linear(h, layer.weight, layer.bias))  # N,H
                out.append(h)
            return out

    def kink_pattern(self, x: Tensor) -> Tensor | None:
        if self.activation != "relu" or not self.hidden:
            return None
        with torch.no_grad():
            return torch.cat([(h > 0).flatten() for h in self.hidden_activations(x)])  # relu input > 0

    # ------------------------------------------------------------------ builtin / custom (autograd)

    def _forward(self, x: Tensor, custom: bool) -> Tensor:
        *hidden, last = self.layers  # (unpacking, not self.layers[:-1], which builds a new ModuleList)
        if custom:
            return MF.linear(self._custom_hidden(x, hidden), last.weight, last.bias)  # N,C
        h = x
        for layer in hidden:
            h = self.f.builtin(F.linear(h, layer.weight, layer.bias))  # h = f(a), a = h_in Wᵀ + b, N,H
        return F.linear(h, last.weight, last.bias)  # N,C

    def _custom_hidden(self, x: Tensor, hidden: Sequence[nn.Linear]) -> Tensor:
        h = x
        for layer in hidden:
            h = self.f.custom_layer(h, layer.weight, layer.bias)  # h = f(h_in Wᵀ + b), one Function, N,H
        return h

    def _logits_and_loss(
        self, x: Tensor, target: Tensor, class_weight: Tensor | None, custom: bool
    ) -> tuple[Tensor, Tensor]:
        if not custom or target.dim() != 1 or class_weight is not None:
            return super()._logits_and_loss(x, target, class_weight, custom)
        # the lecture's case: the last layer and the cross-entropy as one Function (the labels come
        # from the data, whose range is checked where they are read; gather refuses others anyway)
        *hidden, last = self.layers
        h = self._custom_hidden(x, hidden)  # N,H
        loss, logits = MF.LinearSoftmaxCrossEntropyFunction.apply(h, last.weight, last.bias, target)  # ℓ, N,C
        return logits, loss

    def _loss(self, logits: Tensor, target: Tensor, class_weight: Tensor | None, custom: bool) -> Tensor:
        if custom:
            return MF.softmax_cross_entropy(logits, target, weight=class_weight)
        return F.cross_entropy(logits, target, weight=class_weight)

    # ------------------------------------------------------------------ manual (no autograd)

    def _manual_forward(self, x: Tensor) -> tuple[Tensor, MLPCache]:
        linear_caches, activation_caches = [], []
        h = x  # N,I
        *hidden, last = self.layers
        for layer in hidden:
            a, linear_cache = manual.linear_forward(h, layer.weight, layer.bias)  # N,H
            h, activation_cache = self.f.forward(a)  # N,H
            linear_caches.append(linear_cache)
            activation_caches.append(activation_cache)
        logits, linear_cache = manual.linear_forward(h, last.weight, last.bias)  # N,C
        linear_caches.append(linear_cache)
        return logits, (linear_caches, activation_caches)

    def _manual_loss(self, logits: Tensor, target: Tensor, class_weight: Tensor | None) -> tuple[Tensor, Tensor]:
        if target.dim() == 1 and class_weight is None:
            return manual.softmax_cross_entropy(logits, target)  # the lecture's case
        return manual.weighted_soft_target_cross_entropy(logits, target, class_weight)

    def _manual_backward(self, cache: MLPCache, dlogits: Tensor) -> None:
        # The chain rule, layer by layer from the output, starting at dℓ/da = (ŷ − y) / N:
        #   dW = daᵀ h_in,  db = Σ_n da,  dh_in = da W,  da_below = dh_in ⊙ f'(a_below)
        linear_caches, activation_caches = cache
        da = dlogits  # N,C
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            dh, dW, db = manual.linear_backward(da, linear_caches[i], need_dx=i > 0)  # N,I  O,I  O
            manual.accumulate_grad(layer.weight, dW)
            manual.accumulate_grad(layer.bias, db)
            if dh is not None:
                da = self.f.backward(dh, activation_caches[i - 1])  # N,I


class LinearSoftmax(MLP):
    """The linear softmax classifier ``ŷ = softmax(x Wᵀ + b)``: an MLP without hidden layers.

    Args:
        in_features: inputs per sample.
        num_classes: number of classes C.
        backend: gradient path, one of ``builtin``, ``custom``, ``manual``.
        seed: seed for the (Xavier) initialisation.
    """

    kind = "softmax"

    def __init__(self, in_features: int, num_classes: int, backend: str = "builtin", seed: int | None = None) -> None:
        super().__init__(in_features, [], num_classes, activation="sigmoid", backend=backend, seed=seed)

    def config(self) -> dict[str, Any]:
        config = super().config()
        del config["hidden"], config["activation"]
        return config

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"
