"""The lecture's N-layer MLP and its zero-hidden-layer case, the linear softmax classifier.

    h⁰ = x,   aˡ = hˡ⁻¹ Wˡᵀ + bˡ,   hˡ = f(aˡ)  for l = 1 … L−1,   a = hᴸ⁻¹ Wᴸᵀ + bᴸ,   ŷ = softmax(a)
    ℓ = −log ŷ_y            (cross-entropy, averaged over the batch)

With ``output="sigmoid"`` (two classes only) the last layer is the forward-pass slide's single unit:

    p = hᴸ⁻¹ wᵀ + b,   ŷ = σ(p) = P(class 1 | x),   ℓ = −y log ŷ − (1 − y) log(1 − ŷ)

and the model's logits are the two columns ``[0, p]``: their argmax is class 1 exactly when
``ŷ > 1/2``, and their softmax is ``(1 − ŷ, ŷ)`` (softmax([0, p])₁ = e^p / (1 + e^p) = σ(p)), so
accuracy, evaluation and predicted probabilities need nothing new. ``hidden=[]`` with a sigmoid
output is logistic regression.

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
from ..errors import UsageError
from . import manual
from .activations import ACTIVATION_TABLE, ACTIVATIONS, Activation
from .base import Classifier, DenseLayers, check_choice, check_size

__all__ = ["ACTIVATIONS", "MLP", "OUTPUTS", "LinearSoftmax", "init_dense"]

OUTPUTS: tuple[str, ...] = ("softmax", "sigmoid")

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
        output: ``softmax`` (C output units, cross-entropy) or ``sigmoid`` (two classes only: one
            output unit ``ŷ = σ(p)``, binary cross-entropy; see the module docstring).
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
        output: str = "softmax",
    ) -> None:
        super().__init__(backend)
        self.in_features = check_size("in_features", in_features)
        self.num_classes = check_size("num_classes", num_classes)
        self.hidden = [check_size("hidden layer size", h) for h in hidden]
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.output = check_choice("output", output, OUTPUTS)
        if self.output == "sigmoid" and self.num_classes != 2:
            raise UsageError(
                f"a sigmoid output is one unit for two classes; this model has {self.num_classes} classes "
                "(use the softmax output)"
            )
        self.seed = seed
        sizes = [self.in_features, *self.hidden, 1 if self.output == "sigmoid" else self.num_classes]
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
            "output": self.output,
        }

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, output={self.output!r}, backend={self.backend!r}"

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
        h = self._hidden(x, hidden, custom)  # N,H
        linear = MF.linear if custom else F.linear
        return self._logits(linear(h, last.weight, last.bias))  # N,C

    def _hidden(self, x: Tensor, hidden: Sequence[nn.Linear], custom: bool) -> Tensor:
        h = x
        for layer in hidden:
            if custom:
                h = self.f.custom_layer(h, layer.weight, layer.bias)  # h = f(h_in Wᵀ + b), one Function, N,H
            else:
                h = self.f.builtin(F.linear(h, layer.weight, layer.bias))  # h = f(a), a = h_in Wᵀ + b, N,H
        return h

    def _logits(self, a: Tensor) -> Tensor:
        """The output layer's ``a`` as logits: itself (softmax), or ``[0, p]`` for the sigmoid unit ``p``."""
        return torch.cat([torch.zeros_like(a), a], dim=1) if self.output == "sigmoid" else a  # N,C

    def _logits_and_loss(
        self, x: Tensor, target: Tensor, class_weight: Tensor | None, custom: bool
    ) -> tuple[Tensor, Tensor]:
        if not custom or self.output != "softmax" or target.dim() != 1 or class_weight is not None:
            return super()._logits_and_loss(x, target, class_weight, custom)
        # the lecture's case: the last layer and the cross-entropy as one Function (the labels come
        # from the data, whose range is checked where they are read; gather refuses others anyway)
        *hidden, last = self.layers
        h = self._hidden(x, hidden, custom=True)  # N,H
        loss, logits = MF.LinearSoftmaxCrossEntropyFunction.apply(h, last.weight, last.bias, target)  # ℓ, N,C
        return logits, loss

    def _loss(self, logits: Tensor, target: Tensor, class_weight: Tensor | None, custom: bool) -> Tensor:
        if self.output == "sigmoid":
            return self._sigmoid_loss(logits[:, 1], target, class_weight, custom)
        if custom:
            return MF.softmax_cross_entropy(logits, target, weight=class_weight)
        return F.cross_entropy(logits, target, weight=class_weight)

    def _sigmoid_loss(self, p: Tensor, target: Tensor, class_weight: Tensor | None, custom: bool) -> Tensor:
        """Binary cross-entropy of ``ŷ = σ(p)``; class weights as ``F.cross_entropy``: Σ w_{y_n} ℓ_n / Σ w_{y_n}."""
        _check_labels(target)
        reduction = "mean" if class_weight is None else "none"
        if custom:
            losses = MF.sigmoid_binary_cross_entropy(p, target, reduction)
        else:
            losses = F.binary_cross_entropy_with_logits(p, target.to(p.dtype), reduction=reduction)
        if class_weight is None:
            return losses  # the lecture's case: the mean
        w_n = class_weight[target]  # N
        return (w_n * losses).sum() / w_n.sum()

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
        a, linear_cache = manual.linear_forward(h, last.weight, last.bias)  # N,C (N,1 for a sigmoid unit)
        linear_caches.append(linear_cache)
        return self._logits(a), (linear_caches, activation_caches)

    def _manual_loss(self, logits: Tensor, target: Tensor, class_weight: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.output == "sigmoid":
            _check_labels(target)
            loss, dp = manual.sigmoid_binary_cross_entropy(logits[:, 1], target, class_weight)  # dℓ/dp = (ŷ − y) / N
            return loss, dp[:, None]  # N,1: the gradient of the single output unit
        if target.dim() == 1 and class_weight is None:
            return manual.softmax_cross_entropy(logits, target)  # the lecture's case
        return manual.weighted_soft_target_cross_entropy(logits, target, class_weight)

    def _manual_backward(self, cache: MLPCache, dlogits: Tensor) -> None:
        # The chain rule, layer by layer from the output, starting at dℓ/da = (ŷ − y) / N
        # (softmax: N,C; sigmoid: dℓ/dp = (ŷ − y) / N, N,1):
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


def _check_labels(target: Tensor) -> None:
    if target.dim() != 1:
        raise ValueError(f"a sigmoid output takes class labels (N,); got targets of shape {tuple(target.shape)}")


class LinearSoftmax(MLP):
    """The linear softmax classifier ``ŷ = softmax(x Wᵀ + b)``: an MLP without hidden layers.

    Args:
        in_features: inputs per sample.
        num_classes: number of classes C.
        backend: gradient path, one of ``builtin``, ``custom``, ``manual``.
        seed: seed for the (Xavier) initialisation.
        output: ``softmax``, or ``sigmoid`` for two classes: logistic regression ``ŷ = σ(x wᵀ + b)``.
    """

    kind = "softmax"

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        backend: str = "builtin",
        seed: int | None = None,
        output: str = "softmax",
    ) -> None:
        super().__init__(in_features, [], num_classes, activation="sigmoid", backend=backend, seed=seed, output=output)

    def config(self) -> dict[str, Any]:
        config = super().config()
        del config["hidden"], config["activation"]
        return config

    def extra_repr(self) -> str:
        return f"output={self.output!r}, backend={self.backend!r}"
