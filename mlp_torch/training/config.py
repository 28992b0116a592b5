"""The run configuration: one typed dataclass, built from the command line, saved as ``config.json``.

Every number that changes a run's result lives here, so ``config.json`` alone rebuilds the run
(``--resume`` reads it back). Unknown keys and values of the wrong type are errors, never silently
ignored or carried into the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import DataOptions
from ..errors import UsageError
from ..models import ACTIVATIONS, BACKENDS, MODEL_KINDS, OUTPUTS
from ..utils import DTYPES, check_seed, option
from .rundir import MAX_NAME_BYTES

OPTIMIZERS = ("sgd", "adam")
# A linear model on D standardised inputs moves its logits by about η·‖x‖² ≈ η·D per step. On
# 3,072 pixels, at the MLP's 0.05 it oscillates (cat/dog test accuracy 57 %); at 0.001 (η·D ≈ 3)
# it reaches 61 %. So a linear model's default keeps η·D at that value, and never exceeds the
# MLP's: 0.001 for 32×32 images, 0.004 for 16×16, 0.05 for 2-D points (where 0.001 needs hundreds
# of epochs to reach the loss's minimum on the spiral).
DEFAULT_LR = {"mlp": 0.05, "linear": 0.001}
LINEAR_LR_INPUTS = 3072  # the inputs D (32×32 RGB) at which a linear model's default is DEFAULT_LR["linear"]
SCHEDULES = ("constant", "step", "cosine")


@dataclass
class TrainConfig:
    """Everything a training run depends on; every field is a flag of ``mlp-torch train``.

    The defaults, the lecture's two-layer sigmoid MLP with SGD, reach 63.65 % test accuracy on
    CIFAR cat/dog in under a minute on two CPU cores (see README, "Results"). Without augmentation
    the 1.5 M-parameter net memorises its 9,000 training images (lr 0.02: train 94 %, test 62 %);
    random flips and 2-pixel crops, :class:`DataOptions`' defaults, keep it honest.

    Resolved on construction: ``lr=None`` becomes :data:`DEFAULT_LR` for the model, and a
    ``data.seed`` of ``None`` becomes ``seed``, so the one ``--seed`` seeds the split as well.
    """

    # model
    model: str = option(
        "mlp",
        choices=MODEL_KINDS,
        help="softmax: linear softmax classifier; mlp: multi-layer perceptron; "
        "perceptron: Rosenblatt's perceptron (binary for 2 classes, else multi-class)",
    )
    hidden: list[int] = option(
        default_factory=lambda: [512],
        metavar="N",
        help="hidden layer sizes of the mlp, any depth (none = linear softmax)",
    )
    activation: str = option("sigmoid", choices=ACTIVATIONS, help="hidden-layer non-linearity of the mlp")
    output: str = option(
        "softmax",
        choices=OUTPUTS,
        help="softmax: C output units, cross-entropy; sigmoid (two classes, softmax or mlp): the "
        "forward-pass slide's one output unit ŷ = σ(p), binary cross-entropy",
    )
    backend: str = option(
        "custom",
        choices=BACKENDS,
        help="gradient path: builtin = PyTorch ops + autograd, custom = our autograd Functions, "
        "manual = hand-written backward, no autograd",
    )
    # optimisation (the lecture's SGD, with the usual refinements)
    epochs: int = option(
        30, help="passes over the training split; with --resume the new total, the schedule re-stretched to it"
    )
    batch_size: int = option(128, help="samples (images or 2-D points) per SGD step")
    optimizer: str = option("sgd", choices=OPTIMIZERS, help="sgd (the lecture's) or adam")
    lr: float | None = option(
        None,
        help="peak learning rate η; a linear model (softmax, perceptron, an mlp without hidden layers) on D inputs "
        "takes {linear}·{inputs}/D, at most the mlp's (default: mlp {mlp}, linear models {linear} on 32x32 images, "
        "{mlp} on 2-D points)".format(mlp=DEFAULT_LR["mlp"], linear=DEFAULT_LR["linear"], inputs=LINEAR_LR_INPUTS),
    )
    momentum: float = option(0.9, help="SGD momentum (0 = plain SGD)")
    nesterov: bool = option(True, help="Nesterov momentum")
    weight_decay: float = option(5e-4, help="L2 penalty λ (adds λw to ∂ℓ/∂w)")
    schedule: str = option("cosine", choices=SCHEDULES, help="learning-rate schedule after warm-up")
    warmup_epochs: float = option(1.0, help="linear warm-up from 0 to --lr over this many epochs")
    step_size: int = option(10, help="schedule step: epochs between decays")
    gamma: float = option(0.1, help="schedule step: decay factor")
    # soft targets: the same cross-entropy, dℓ/da = ŷ − t, against probability rows t (mlp_torch.data.targets)
    label_smoothing: float = option(
        0.0, metavar="EPS", help="train on the targets (1 − ε) y + ε / C instead of one-hot y (0 = off)"
    )
    mixup: float = option(
        0.0,
        metavar="ALPHA",
        help="mixup: train on λ x + (1 − λ) x' and λ t + (1 − λ) t' for pairs within a batch, "
        "λ ~ Beta(α, α) per batch (0 = off)",
    )
    # bookkeeping
    seed: int = option(0, help="seeds initialisation, split, shuffling, augmentation")
    device: str = option(
        "auto",
        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps; under torchrun each process takes "
        "cuda:LOCAL_RANK (auto or cuda) or the cpu",
    )
    cuda_graphs: bool | None = option(
        None,
        help="CUDA, one process: replay each full batch's forward and backward from one CUDA graph; the optimizer "
        "still steps eagerly, after the divergence check (default: on for CUDA in one process, off elsewhere; "
        "--no-cuda-graphs launches every kernel from Python)",
    )
    dtype: str = option(
        "float32",
        choices=tuple(DTYPES),
        help="parameters, gradients and standardised inputs; float64 makes runs comparable to the last bits "
        "(e.g. N processes against one)",
    )
    dist_timeout: float = option(
        600.0,
        metavar="SECONDS",
        help="under torchrun: how long a process waits for the others (a collective, rank 0 preparing the "
        "data or saving) before it stops with an error; a process that dies is noticed at once",
    )
    runs_dir: Path = option(Path("runs"), help="where run directories are created")
    name: str = option(
        "", help="run name, the start of the run's folder name (default: e.g. mlp512-sigmoid-custom-lr0.05-seed0)"
    )
    check_grads_every: int = option(
        0,
        metavar="N",
        help="every N steps compare the custom/manual gradients with builtin, layer by layer, and print and log "
        "the verdict (0 = off)",
    )
    # 5, not 1: drawing the matplotlib figures costs about a tenth of a default cat/dog epoch on a CPU
    histogram_every: int = option(
        5,
        metavar="N",
        help="every N epochs, and at the last, log histograms and the figures: learned templates, the validation "
        "confusion matrix, gradient norms by layer; at the end the test confusion matrix (0 = off)",
    )
    log_every: int = option(
        5,
        metavar="N",
        help="every N steps log the training loss, accuracy, learning rate and gradient norms, each the mean "
        "over those N steps (0 = off)",
    )
    boundary_every: int | None = option(
        None,
        metavar="N",
        help="2-D datasets: every N epochs draw the decision boundary into TensorBoard (image "
        "decision_boundary) and decision_boundary.png; the run's final model is drawn at the end "
        "(default: a tenth of --epochs, so ten frames; 0 = only at the end)",
    )
    progress: bool | None = option(
        None,
        help="a progress bar per epoch on stderr, beside the one line per epoch on stdout "
        "(default: only when stderr is a terminal)",
    )
    data: DataOptions = dataclasses.field(default_factory=DataOptions)

    def __post_init__(self) -> None:
        self.runs_dir = Path(self.runs_dir)
        self.hidden = [int(h) for h in self.hidden]
        if isinstance(self.data, dict):
            self.data = data_options_from_dict(self.data)
        if self.lr is None:
            self.lr = default_lr(self.model, self.hidden, self.data.in_features)
        if self.data.seed is None:  # a copy: the caller's DataOptions stays as it was
            self.data = dataclasses.replace(self.data, seed=self.seed)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UsageError` naming the first bad value and what is allowed."""
        _choice("--model", self.model, MODEL_KINDS)
        _choice("--activation", self.activation, ACTIVATIONS)
        _choice("--backend", self.backend, BACKENDS)
        _choice("--output", self.output, OUTPUTS)
        if self.output == "sigmoid" and self.model == "perceptron":
            raise UsageError("--output sigmoid is for --model softmax or mlp; the perceptron's output is its step")
        _choice("--optimizer", self.optimizer, OPTIMIZERS)
        _choice("--schedule", self.schedule, SCHEDULES)
        _choice("--dtype", self.dtype, tuple(DTYPES))
        if any(h < 1 for h in self.hidden):
            raise UsageError(f"--hidden sizes must be positive integers, got {' '.join(map(str, self.hidden))}")
        _positive("--lr", self.lr)
        _positive("--epochs", self.epochs)
        _positive("--batch-size", self.batch_size)
        _positive("--step-size", self.step_size)
        _positive("--dist-timeout", self.dist_timeout)
        if not 0.0 <= self.momentum < 1.0:
            raise UsageError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise UsageError("--nesterov needs --momentum > 0 (or pass --no-nesterov)")
        if self.weight_decay < 0 or not math.isfinite(self.weight_decay):
            raise UsageError(f"--weight-decay must be a finite number ≥ 0, got {self.weight_decay}")
        if not 0 < self.gamma <= 1:
            raise UsageError(f"--gamma must be in (0, 1], got {self.gamma}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UsageError(f"--label-smoothing must be in [0, 1) (0 = off), got {self.label_smoothing}")
        if not (self.mixup >= 0 and math.isfinite(self.mixup)):
            raise UsageError(f"--mixup must be a finite number ≥ 0 (0 = off), got {self.mixup}")
        if self.model == "perceptron" and (self.label_smoothing or self.mixup):
            raise UsageError(
                "--label-smoothing and --mixup make soft targets for softmax cross-entropy; "
                "the perceptron learns from class labels (choose --model mlp or softmax)"
            )
        if not (self.warmup_epochs >= 0 and math.isfinite(self.warmup_epochs)):
            raise UsageError(f"--warmup-epochs must be a finite number ≥ 0, got {self.warmup_epochs}")
        if min(self.check_grads_every, self.histogram_every, self.log_every) < 0:
            raise UsageError("--check-grads-every, --histogram-every and --log-every must be ≥ 0 (0 turns them off)")
        if self.boundary_every is not None and self.boundary_every < 0:
            raise UsageError(f"--boundary-every must be ≥ 0 (0: only the final picture), got {self.boundary_every}")
        check_seed(self.seed)
        if self.name and any(c in self.name for c in "/\\\0") or self.name in (".", ".."):
            raise UsageError(f"--name {self.name!r} must be a plain name, without path separators")
        if len(self.name.encode()) > MAX_NAME_BYTES:
            raise UsageError(
                f"--name is {len(self.name.encode())} bytes long; a run directory's name holds at most "
                f"{MAX_NAME_BYTES} beside its date-time stamp"
            )

    @property
    def run_name(self) -> str:
        """``--name``, or what tells runs apart, e.g. ``mlp512x256-sigmoid-custom-lr0.05-seed0``.

        A sigmoid output shows as ``-sigmoidout`` (``mlp8-tanh-sigmoidout-custom-lr0.05-seed0``), and
        the linear softmax model with one is logistic regression (``logistic-custom-…``).
        """
        if self.name:
            return self.name
        out = "-sigmoidout" if self.output == "sigmoid" else ""
        tail = f"{self.backend}-lr{self.lr:g}-seed{self.seed}"
        if self.model == "softmax" and self.output == "sigmoid":
            return f"logistic-{tail}"
        if self.model != "mlp":
            return f"{self.model}-{tail}"
        if not self.hidden:
            return f"mlp0{out}-{tail}"  # the linear softmax classifier: no activation
        name = f"mlp{'x'.join(map(str, self.hidden))}-{self.activation}{out}-{tail}"
        if len(name) > MAX_NAME_BYTES:  # a very deep net: its depth, not every width
            name = f"mlp{len(self.hidden)}layers-{self.activation}{out}-{tail}"
        return name

    def with_absolute_paths(self) -> TrainConfig:
        """This config with ``runs_dir``, ``data.data_root`` and ``data.cache_dir`` absolute.

        A run saves this form, so its ``config.json`` means the same data from any current folder
        (``mlp-torch eval runs/x`` from elsewhere, ``--resume`` from a script).
        """
        data = dataclasses.replace(
            self.data,
            data_root=_absolute(self.data.data_root),
            cache_dir=None if self.data.cache_dir is None else _absolute(self.data.cache_dir),
        )
        return dataclasses.replace(self, runs_dir=_absolute(self.runs_dir), data=data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: paths as strings, the data options as a nested dict."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The inverse of :meth:`to_dict`; unknown keys and wrong types raise :class:`UsageError`.

        Args:
            values: as read from ``config.json`` (its ``config`` entry).
        """
        _check_keys_and_types("config", values, cls)
        return cls(**values)


def default_lr(model: str, hidden: list[int], in_features: int = LINEAR_LR_INPUTS) -> float:
    """The learning rate used when none is given: the MLP's, or a linear model's, which keeps η·D constant.

    Args:
        model: ``softmax``, ``mlp`` or ``perceptron``.
        hidden: the mlp's hidden sizes (none: a linear model).
        in_features: D, the inputs per sample (3·H·W for images, 2 for points).
    """
    if model == "mlp" and hidden:
        return DEFAULT_LR["mlp"]
    return min(DEFAULT_LR["mlp"], DEFAULT_LR["linear"] * (LINEAR_LR_INPUTS / in_features))


def data_options_from_dict(values: dict[str, Any]) -> DataOptions:
    """Rebuild :class:`DataOptions` from its ``to_dict`` form; unknown keys, wrong types: :class:`UsageError`."""
    _check_keys_and_types("config data", values, DataOptions)
    return DataOptions(**values)


def _check_keys_and_types(what: str, values: Any, cls: type) -> None:
    """Refuse what a hand-edited ``config.json`` may hold: unknown keys, and values of the wrong JSON type."""
    if not isinstance(values, dict):
        raise UsageError(f"{what} must be a JSON object, got {_json_kind(values)}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"unknown {what} key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if not _has_type(value, hints[key]):
            raise UsageError(
                f"{what} key {key!r} must be {_describe(hints[key])}, got {json.dumps(value, default=str)} "
                f"({_json_kind(value)})"
            )


def _has_type(value: Any, hint: Any) -> bool:
    """``isinstance`` for the few annotations a config holds, as JSON spells them (a path is a string)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):  # JSON writes 1.0 as 1.0, but a hand-edited 1 is a fine float
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if hint is Path:
        return isinstance(value, (str, Path))
    return isinstance(value, dict) if dataclasses.is_dataclass(hint) else isinstance(value, hint)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0]).split(' ', 1)[1]}s"
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if hint is Path:
        return "a path (a string)"
    return "an object"


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    kinds = [(bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"), (list, "a list")]
    return next((name for cls, name in kinds if isinstance(value, cls)), "an object")


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{flag} {value!r} is not one of: {', '.join(allowed)}")


def _positive(flag: str, value: float | None) -> None:
    if value is None or not (value > 0 and math.isfinite(value)):
        raise UsageError(f"{flag} must be a positive number, got {value}")
