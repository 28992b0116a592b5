"""The hidden-layer activations, one record each, serving all three gradient paths.

Each :class:`Activation` holds, for one name, PyTorch's op (``builtin``), our autograd Function
(``custom``, from :mod:`mlp_torch.functional`) and the whole layer ``h = f(x Wᵀ + b)`` as one Function
(``custom_layer``, what the models' ``custom`` path runs), the hand-written forward/backward pair
(``manual``, from :mod:`mlp_torch.models.manual`) and the initialisation that suits it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import functional as MF
from . import manual


@dataclass(frozen=True)
class Activation:
    """One non-linearity ``h = f(a)``, as each gradient path computes it.

    Attributes:
        name: ``sigmoid``, ``tanh`` or ``relu``.
        builtin: PyTorch's op, differentiated by autograd.
        custom: our ``torch.autograd.Function``.
        custom_layer: ``(x, W, b) -> f(x Wᵀ + b)``, the linear map and ``f`` fused into one Function.
        forward: manual ``a -> (h, cache)``.
        backward: manual ``(dh, cache) -> da``.
        init: the hidden layers' initialisation (see :func:`mlp_torch.models.mlp.init_dense`).
    """

    name: str
    builtin: Callable[[Tensor], Tensor]
    custom: Callable[[Tensor], Tensor]
    custom_layer: Callable[[Tensor, Tensor, Tensor], Tensor]
    forward: Callable[[Tensor], tuple[Tensor, Tensor]]
    backward: Callable[[Tensor, Tensor], Tensor]
    init: str


ACTIVATION_TABLE: dict[str, Activation] = {
    "sigmoid": Activation(
        "sigmoid",
        torch.sigmoid,
        MF.sigmoid,
        MF.LinearSigmoidFunction.apply,
        manual.sigmoid_forward,
        manual.sigmoid_backward,
        init="xavier",
    ),
    "tanh": Activation(
        "tanh",
        torch.tanh,
        MF.tanh,
        MF.LinearTanhFunction.apply,
        manual.tanh_forward,
        manual.tanh_backward,
        init="xavier_tanh",
    ),
    "relu": Activation(
        "relu", torch.relu, MF.relu, MF.LinearReLUFunction.apply, manual.relu_forward, manual.relu_backward, init="he"
    ),
}

ACTIVATIONS: tuple[str, ...] = tuple(ACTIVATION_TABLE)
