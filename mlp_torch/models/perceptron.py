"""Rosenblatt's perceptron (1957), binary and multi-class, as gradient descent on the perceptron criterion.

Binary (``num_classes == 2``, one output unit, labels y ∈ {0, 1}):

    f(x) = step(w·x + b) = 1[w·x + b > 0]         rule:  w ← w + η (y − f(x)) x,   b ← b + η (y − f(x))

Multi-class (``num_classes ≥ 3``, one row of W per class), ŷ = argmax_c (W x + b)_c:

    on a mistake (ŷ ≠ y):   W[y] += η x,  b[y] += η,   W[ŷ] −= η x,  b[ŷ] −= η

Both rules are SGD steps on the *perceptron criterion*, with f(x) and ŷ held fixed:

    binary       ℓ = (f(x) − y) a,              a = w·x + b      dℓ/da = f(x) − y
    multi-class  ℓ = a_ŷ − a_y,                 a = W x + b      dℓ/da = e_ŷ − e_y

so ``torch.optim.SGD(lr=η)`` on a batch of one sample reproduces the rule exactly, and a batch
of N takes the averaged step (``compute_gradients`` averages over the batch, like every model here).
ℓ ≥ 0 and ℓ = 0 on a correct prediction; its gradient is 0 there, so only mistakes move W.
The step's derivative is 0, which is why the builtin/custom paths may put ``step`` in the graph:
autograd then differentiates only through ``a``.

Weights start at 0, as in the classical algorithm (no seed is needed).
Logits: multi-class returns ``a``; binary returns the two columns ``[0, a]`` so that argmax gives
f(x) (a tie at a = 0 picks class 0, matching step(0) = 0).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as MF
from ..errors import UsageError
from . import manual
from .base import Classifier, DenseLayers, check_size


class Perceptron(Classifier):
    """Single-layer perceptron trained with the perceptron rule (see the module docstring).

    Args:
        in_features: inputs per sample.
        num_classes: 2 gives Rosenblatt's binary perceptron (one output unit with a step);
            3 or more the multi-class perceptron (one weight row per class).
        backend: gradient path, one of ``builtin``, ``custom``, ``manual``.
    """

    kind = "perceptron"

    def __init__(self, in_features: int, num_classes: int, backend: str = "builtin") -> None:
        super().__init__(backend)
        self.in_features = check_size("in_features", in_features)
        self.num_classes = check_size("num_classes", num_classes)
        if num_classes < 2:
            raise UsageError(f"a perceptron needs at least 2 classes, got {num_classes}")
        self.binary = num_classes == 2
        self.layers = DenseLayers([nn.Linear(self.in_features, 1 if self.binary else self.num_classes)])
        with torch.no_grad():
            self.layers[0].weight.zero_()
            self.layers[0].bias.zero_()

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "in_features": self.in_features,
            "num_classes": self.num_classes,
            "backend": self.backend,
        }

    def extra_repr(self) -> str:
        return f"binary={self.binary}, backend={self.backend!r}"

    def predict(self, x: Tensor) -> Tensor:
        """Predicted class per row of x: f(x) ∈ {0, 1} (binary) or argmax_c a_c (int64, (N,))."""
        with torch.no_grad():
            a, _ = manual.linear_forward(x, self.layers[0].weight, self.layers[0].bias)  # N,1 or N,C
            return (a[:, 0] > 0).long() if self.binary else a.argmax(dim=1)

    def kink_pattern(self, x: Tensor) -> Tensor | None:
        # the criterion is linear in W while every prediction stays the same
        return self.predict(x)

    def fit(
        self, x: Tensor, y: Tensor, epochs: int = 100, lr: float = 1.0, shuffle_seed: int | None = None
    ) -> list[int]:
        """The classical online algorithm: one sample at a time, update on each mistake.

        Stops after the first epoch without a mistake (the data are then separated).

        Args:
            x: (N, in_features) inputs.
            y: (N,) int64 labels in 0..num_classes−1.
            epochs: maximum number of passes over the data.
            lr: the learning rate η.
            shuffle_seed: visit samples in a fresh random order each epoch; ``None`` keeps the given order.

        Returns:
            The number of mistakes made in each epoch.
        """
        weight, bias = self.layers[0].weight, self.layers[0].bias
        generator = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
        mistakes_per_epoch: list[int] = []
        with torch.no_grad():
            for _ in range(epochs):
                order = range(len(x)) if generator is None else torch.randperm(len(x), generator=generator).tolist()
                mistakes = 0
                for n in order:
                    x_n, y_n = x[n], int(y[n])
                    a = weight @ x_n + bias  # 1 or C
                    if self.binary:
                        f = int(a[0] > 0)
                        if f != y_n:  # w ← w + η (y − f(x)) x,  b ← b + η (y − f(x))
                            weight[0].add_(x_n, alpha=lr * (y_n - f))
                            bias[0] += lr * (y_n - f)
                            mistakes += 1
                    else:
                        y_hat = int(a.argmax())
                        if y_hat != y_n:  # W[y] += η x,  W[ŷ] −= η x
                            weight[y_n].add_(x_n, alpha=lr)
                            weight[y_hat].sub_(x_n, alpha=lr)
                            bias[y_n] += lr
                            bias[y_hat] -= lr
                            mistakes += 1
                mistakes_per_epoch.append(mistakes)
                if mistakes == 0:
                    break
        return mistakes_per_epoch

    # ------------------------------------------------------------------ builtin / custom (autograd)

    def _forward(self, x: Tensor, custom: bool) -> Tensor:
        layer = self.layers[0]
        a = (MF.linear if custom else F.linear)(x, layer.weight, layer.bias)  # N,1 or N,C
        return self._logits(a)

    def _logits(self, a: Tensor) -> Tensor:
        return torch.cat([torch.zeros_like(a), a], dim=1) if self.binary else a  # N,C

    def _loss(self, logits: Tensor, target: Tensor, class_weight: Tensor | None, custom: bool) -> Tensor:
        if self.binary:
            a = logits[:, 1]  # N
            f = MF.step(a) if custom else (a > 0).to(a.dtype).detach()  # f(x), N; step' = 0
            per_sample = (f - target.to(a.dtype)) * a  # ℓ_n = (f(x_n) − y_n) a_n
        else:
            y_hat = logits.detach().argmax(dim=1, keepdim=True)  # N,1
            per_sample = logits.gather(1, y_hat)[:, 0] - logits.gather(1, target[:, None])[:, 0]  # a_ŷ − a_y
        return _weighted_mean(per_sample, target, class_weight)

    # ------------------------------------------------------------------ manual (no autograd)

    def _manual_forward(self, x: Tensor) -> tuple[Tensor, manual.LinearCache]:
        layer = self.layers[0]
        a, cache = manual.linear_forward(x, layer.weight, layer.bias)  # N,1 or N,C
        return self._logits(a), cache

    def _manual_loss(self, logits: Tensor, target: Tensor, class_weight: Tensor | None) -> tuple[Tensor, Tensor]:
        n = logits.shape[0]
        rows = torch.arange(n, device=logits.device)
        w_n = torch.ones(n, dtype=logits.dtype, device=logits.device) if class_weight is None else class_weight[target]
        norm = w_n.sum()  # N, or Σ_n w_{y_n}
        if self.binary:
            a = logits[:, 1]  # N
            da = (a > 0).to(a.dtype) - target.to(a.dtype)  # dℓ/da = f(x) − y, N
            loss = (w_n * da * a).sum() / norm
            return loss, (w_n * da / norm)[:, None]  # N,1: the gradient of the single output unit
        y_hat = logits.argmax(dim=1)  # N
        loss = (w_n * (logits[rows, y_hat] - logits[rows, target])).sum() / norm
        da = torch.zeros_like(logits)  # N,C
        da[rows, y_hat] += 1.0  # dℓ/da = e_ŷ − e_y (the two cancel when ŷ = y)
        da[rows, target] -= 1.0
        return loss, da.mul_((w_n / norm)[:, None])

    def _manual_backward(self, cache: manual.LinearCache, dlogits: Tensor) -> None:
        # dW = daᵀ x,  db = Σ_n da   (dlogits is already dℓ/da of the output unit(s))
        layer = self.layers[0]
        _, dW, db = manual.linear_backward(dlogits, cache, need_dx=False)  # O,I  O
        manual.accumulate_grad(layer.weight, dW)
        manual.accumulate_grad(layer.bias, db)


def _weighted_mean(per_sample: Tensor, target: Tensor, class_weight: Tensor | None) -> Tensor:
    """Σ_n w_{y_n} ℓ_n / Σ_n w_{y_n}  (plain mean without weights): ``F.cross_entropy``'s convention."""
    if class_weight is None:
        return per_sample.mean()
    w_n = class_weight[target]  # N
    return (w_n * per_sample).sum() / w_n.sum()
