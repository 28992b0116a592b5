"""Models: ``LinearSoftmax``, ``MLP`` and ``Perceptron``, each with three gradient paths.

Every model is a :class:`~mlp_torch.models.base.Classifier`: ``model.backend`` picks ``builtin``
(PyTorch ops + autograd), ``custom`` (our autograd Functions) or ``manual`` (hand-written backward,
no autograd); ``model.compute_gradients(x, y)`` runs forward and backward with it and accumulates
into ``.grad``. Parameters are always ``layers.{i}.weight`` (out, in) and ``layers.{i}.bias``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import BACKENDS, Classifier, check_choice
from .mlp import ACTIVATIONS, MLP, LinearSoftmax
from .perceptron import Perceptron

MODEL_KINDS: tuple[str, ...] = ("softmax", "mlp", "perceptron")

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "MODEL_KINDS",
    "Classifier",
    "LinearSoftmax",
    "MLP",
    "Perceptron",
    "build_model",
]


def build_model(
    kind: str,
    in_features: int,
    num_classes: int,
    hidden: Sequence[int] = (),
    activation: str = "sigmoid",
    backend: str = "builtin",
    seed: int | None = None,
) -> Classifier:
    """Build a model by name; ``build_model(**model.config())`` rebuilds ``model``.

    Args:
        kind: ``softmax``, ``mlp`` or ``perceptron``.
        in_features: inputs per sample (3·H·W for images).
        num_classes: number of classes.
        hidden: hidden layer sizes, used by ``mlp`` only (``softmax``/``perceptron`` ignore it).
        activation: ``sigmoid``, ``tanh`` or ``relu``, used by ``mlp`` only.
        backend: ``builtin``, ``custom`` or ``manual``.
        seed: initialisation seed (``perceptron`` starts at zero and ignores it).

    Raises:
        UsageError: an unknown kind, activation or backend, or a non-positive size.
    """
    check_choice("model", kind, MODEL_KINDS)
    if kind == "softmax":
        return LinearSoftmax(in_features, num_classes, backend=backend, seed=seed)
    if kind == "mlp":
        return MLP(in_features, list(hidden), num_classes, activation=activation, backend=backend, seed=seed)
    return Perceptron(in_features, num_classes, backend=backend)
