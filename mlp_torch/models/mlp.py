"""The lecture's N-layer MLP and its zero-hidden-layer case, the linear softmax classifier.

    h⁰ = x,   hˡ = f(hˡ⁻¹ Wˡᵀ + bˡ)  for l = 1 … L−1,   a = hᴸ⁻¹ Wᴸᵀ + bᴸ,   ŷ = softmax(a)
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
from .base import Classifier, DenseLayers, check_choice, check_size

ACTIVATIONS: tuple[str, ...] = ("sigmoid", "tanh", "relu")

_BUILTIN_ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}
_CUSTOM_ACTIVATIONS = {"sigmoid": MF.sigmoid, "tanh": MF.tanh, "relu": MF.relu}


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
        hidden_scheme = {"sigmoid": "xavier", "tanh": "xavier_tanh", "relu": "he"}[self.activation]
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

    def hidden_activations(self, x: Tensor) -> list[Tensor]:
        with torch.no_grad():
            out = []
            h = x
            for layer in self.layers[:-1]:
                h = manual.activation_forward(self.activation, manual.linear_forward(h, layer.weight, layer.bias))
                out.append(h)
            return out

    def kink_pattern(self, x: Tensor) -> Tensor | None:
        if self.activation != "relu" or not self.hidden:
            return None
        with torch.no_grad():
            return torch.cat([(h > 0).flatten() for h in self.hidden_activations(x)])  # relu input > 0

    # ------------------------------------------------------------------ builtin / custom (autograd)

    def _forward(self, x: Tensor, custom: bool) -> Tensor:
        linear = MF.linear if custom else F.linear
        f = (_CUSTOM_ACTIVATIONS if custom else _BUILTIN_ACTIVATIONS)[self.activation]
        h = x
        for layer in self.layers[:-1]:
            h = f(linear(h, layer.weight, layer.bias))  # N,H
        last = self.layers[-1]
        return linear(h, last.weight, last.bias)  # N,C

    def _loss(self, logits: Tensor, target: Tensor, class_weight: Tensor | None, custom: bool) -> Tensor:
        if custom:
            return MF.softmax_cross_entropy(logits, target, weight=class_weight)
        return F.cross_entropy(logits, target, weight=class_weight)

    # ------------------------------------------------------------------ manual (no autograd)

    def _manual_forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        # cache[l] is the input of layer l: x, then each hidden activation's output h
        cache = [x]
        for layer in self.layers[:-1]:
            a = manual.linear_forward(cache[-1], layer.weight, layer.bias)  # N,H
            cache.append(manual.activation_forward(self.activation, a))  # N,H  (in place: a is gone)
        last = self.layers[-1]
        return manual.linear_forward(cache[-1], last.weight, last.bias), cache  # N,C

    def _manual_loss(self, logits: Tensor, target: Tensor, class_weight: Tensor | None) -> tuple[Tensor, Tensor]:
        return manual.softmax_cross_entropy_with_grad(logits, target, class_weight)

    def _manual_backward(self, cache: list[Tensor], dlogits: Tensor) -> None:
        # dℓ/da at the output is ŷ − y (from the fused loss); walk the layers backwards:
        #   dW = daᵀ h_in,  db = Σ_n da,  dh_in = da W,  da_prev = dh_in ⊙ f'(a_prev)
        da = dlogits  # N,C
        for i in range(len(self.layers) - 1, -1, -1):
            layer, h_in = self.layers[i], cache[i]
            manual.accumulate_linear_grads(da, h_in, layer.weight, layer.bias)
            if i == 0:
                break  # nobody asked for dℓ/dx
            dh = manual.linear_backward_input(da, layer.weight)  # N,H
            da = manual.activation_backward(self.activation, h_in, dh)  # N,H


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
