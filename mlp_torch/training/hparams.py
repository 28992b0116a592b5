"""Which config fields are a run's hyperparameters, for TensorBoard's HPARAMS tab.

A hyperparameter is a field that changes what is trained, and only where it applies: a softmax
run has no hidden sizes or activation, momentum belongs to SGD, the step schedule's decay to the
step schedule. Bookkeeping (where files go, what is logged, how the run reports) is no
hyperparameter. Every field of :class:`~mlp_torch.training.TrainConfig` and
:class:`~mlp_torch.data.DataOptions` is one or the other, in the tables below; a new field must
be added to one of them (``tests/test_tensorboard.py`` checks).

Values keep their types: numbers as numbers, booleans as booleans, choices and names as strings
(hidden sizes as ``"512-256"``, classes as ``"cat,dog"``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

from ..data import DataOptions
from .config import TrainConfig

HParamValue = bool | float | int | str

__all__ = ["DATA_HPARAMS", "NOT_HPARAMS", "TRAIN_HPARAMS", "HParamDomain", "HParamValue", "hparam_domains", "hparams"]


def _always(config: TrainConfig) -> bool:
    return True


def _has_hidden(config: TrainConfig) -> bool:
    return config.model == "mlp" and bool(config.hidden)


def _sgd(config: TrainConfig) -> bool:
    return config.optimizer == "sgd"


def _step_schedule(config: TrainConfig) -> bool:
    return config.schedule == "step"


def _softmax_targets(config: TrainConfig) -> bool:
    return config.model != "perceptron"


def _images(config: TrainConfig) -> bool:
    return not config.data.is_planar


def _planar(config: TrainConfig) -> bool:
    return config.data.is_planar


# field -> when it is a hyperparameter of the run
TRAIN_HPARAMS: dict[str, Callable[[TrainConfig], bool]] = {
    "model": _always,
    "hidden": _has_hidden,
    "activation": _has_hidden,
    "output": _always,
    "backend": _always,
    "dtype": _always,  # float64 trains other numbers than float32
    "epochs": _always,
    "batch_size": _always,
    "optimizer": _always,
    "lr": _always,
    "momentum": _sgd,
    "nesterov": lambda c: _sgd(c) and c.momentum > 0,
    "weight_decay": _always,
    "schedule": _always,
    "warmup_epochs": _always,
    "step_size": _step_schedule,
    "gamma": _step_schedule,
    "label_smoothing": _softmax_targets,
    "mixup": _softmax_targets,
    "seed": _always,
}
DATA_HPARAMS: dict[str, Callable[[TrainConfig], bool]] = {
    "dataset": _always,
    "classes": _always,
    "val_fraction": _always,
    "image_size": _images,
    "balance": _always,
    "augment_flip": _images,
    "augment_crop": _images,
    "whiten": _always,
    "zca_eps": lambda c: c.data.whiten == "zca",
    "seed": lambda c: c.data.seed != c.seed,  # as "data_seed", when it is not the run's seed
    "synthetic_train_per_class": lambda c: c.data.dataset == "synthetic",
    "synthetic_test_per_class": lambda c: c.data.dataset == "synthetic",
    "samples": _planar,
    "noise": _planar,
    "arms": lambda c: c.data.dataset == "spiral",
}
# where the run goes and runs, what is logged and shown, how the data are fetched and the steps
# launched: none changes what is trained
NOT_HPARAMS = frozenset(
    {
        "device",
        "cuda_graphs",
        "dist_timeout",
        "runs_dir",
        "name",
        "check_grads_every",
        "histogram_every",
        "log_every",
        "boundary_every",
        "progress",
        "data",
        "data.data_root",
        "data.cache_dir",
        "data.cache",
        "data.cifar10_url",
        "data.cifar10_md5",
        "data.cifar100_url",
        "data.cifar100_md5",
        "data.download_timeout",
    }
)


def hparam_name(field: str, data: bool) -> str:
    """The HPARAMS column of a field: its own name, ``data_seed`` for the data's seed."""
    return "data_seed" if data and field == "seed" else field


def hparams(config: TrainConfig, classes: list[str]) -> dict[str, HParamValue]:
    """The hyperparameters of this run, each with its real type.

    Args:
        config: the run's config.
        classes: the class names the run trains on (what ``classes`` resolved to).
    """
    values: dict[str, HParamValue] = {}
    for owner, table, data in ((config, TRAIN_HPARAMS, False), (config.data, DATA_HPARAMS, True)):
        for field, applies in table.items():
            if applies(config):
                values[hparam_name(field, data)] = _value(getattr(owner, field))
    if "hidden" in values:
        values["hidden"] = "-".join(map(str, config.hidden))
    values["classes"] = ",".join(classes)
    return values


@dataclasses.dataclass(frozen=True)
class HParamDomain:
    """What values a hyperparameter takes: its type (``bool``, ``float`` for any number, ``str``) and its choices."""

    kind: type
    choices: tuple[str, ...] | None = None  # a flag's choices (``--model``'s, …)


def hparam_domains() -> dict[str, HParamDomain]:
    """Every hyperparameter any run may have, with its domain, in the order of the tables."""
    domains: dict[str, HParamDomain] = {}
    for cls, table, data in ((TrainConfig, TRAIN_HPARAMS, False), (DataOptions, DATA_HPARAMS, True)):
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in table:
            choices = fields[name].metadata.get("choices")
            domains[hparam_name(name, data)] = HParamDomain(_kind(hints[name]), tuple(choices) if choices else None)
    return domains


def config_fields() -> set[str]:
    """Every field of the config, the data options' as ``data.<field>``: each must be in a table above."""
    return {f.name for f in dataclasses.fields(TrainConfig)} | {
        f"data.{f.name}" for f in dataclasses.fields(DataOptions)
    }


def _kind(hint: Any) -> type:
    """``bool``, ``float`` (any number) or ``str`` (anything else: choices, lists, names)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: X
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if hint is bool:
        return bool
    return float if hint in (int, float) else str


def _value(value: Any) -> HParamValue:
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)
