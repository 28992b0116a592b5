"""Models: ``LinearSoftmax``, ``MLP`` and ``Perceptron``, each with three gradient paths.

Every model is a :class:`~mlp_torch.models.base.Classifier`: ``model.backend`` picks ``builtin``
(PyTorch ops + autograd), ``custom`` (our autograd Functions) or ``manual`` (hand-written backward,
no autograd); ``model.compute_gradients(x, y)`` runs forward and backward with it and accumulates
into ``.grad``. Parameters are always ``layers.{i}.weight`` (out, in) and ``layers.{i}.bias``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UsageError
from .base import BACKENDS, Classifier, check_choice
from .mlp import ACTIVATIONS, MLP, OUTPUTS, LinearSoftmax
from .perceptron import Perceptron

MODEL_KINDS: tuple[str, ...] = ("softmax", "mlp", "perceptron")

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "MODEL_KINDS",
    "OUTPUTS",
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
    output: str = "softmax",
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
        output: ``softmax`` or ``sigmoid`` (two classes, one output unit ``ŷ = σ(p)``), for
            ``softmax`` and ``mlp``; the perceptron's output is its step.

    Raises:
        UsageError: an unknown kind, activation, output or backend, a non-positive size, a
            sigmoid output for other than two classes or for the perceptron.
    """
    check_choice("model", kind, MODEL_KINDS)
    check_choice("output", output, OUTPUTS)
    if kind == "softmax":
        return LinearSoftmax(in_features, num_classes, backend=backend, seed=seed, output=output)
    if kind == "mlp":
        return MLP(
            in_features, list(hidden), num_classes, activation=activation, backend=backend, seed=seed, output=output
        )
    if output != "softmax":
        raise UsageError(f"the perceptron's output is its step, not a {output}; choose the softmax or mlp model")
    return Perceptron(in_features, num_classes, backend=backend)
