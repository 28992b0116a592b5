"""The search-space grammar of ``mlp-torch sweep``: what the text of each flag means.

Every flag of ``mlp-torch train`` is a flag of ``mlp-torch sweep``. A numeric, boolean or choice
flag, and ``--hidden``, may hold a search space instead of one value:

    LOW..HIGH         uniform in [LOW, HIGH]; integers for an integer flag   --momentum 0.8..0.99
    LOW..HIGH:log     log-uniform, LOW > 0                                    --lr 1e-3..1e-1:log
    A,B,C             one of these values                                     --weight-decay 0,1e-4,5e-4
    A|B|C             --hidden: one of these layer lists                      --hidden "512|1024|1024 1024"
    A                 this value, as mlp-torch train reads it                 --epochs 30

A search space becomes one Optuna distribution per flag, named by the field (``lr``,
``weight_decay``, ``hidden``); a trial's parameters come back as the values a
:class:`~mlp_torch.training.TrainConfig` holds (``hidden`` as a list of sizes).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..data import DataOptions
from ..errors import UsageError
from ..training.config import TrainConfig

# Fields a sweep sets itself, or that make no sense to search.
NOT_SWEEP_FLAGS = ("runs_dir", "name", "progress")  # trials go to the sweep directory; no progress bars
NOT_SEARCHABLE = ("seed",)  # --seeds S trains every configuration with S seeds instead
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class Range:
    """``LOW..HIGH`` or ``LOW..HIGH:log``: a number drawn from [low, high], integers for an integer flag."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def __str__(self) -> str:
        return f"{_number(self.low)}..{_number(self.high)}" + (":log" if self.log else "")


@dataclass(frozen=True)
class Choices:
    """``A,B,C`` (``A|B|C`` for ``--hidden``): one of the values, as the config holds them."""

    values: tuple[Any, ...]

    def __str__(self) -> str:
        if self.values and isinstance(self.values[0], list):
            return "|".join(" ".join(map(str, v)) for v in self.values)
        return ",".join(_number(v) if isinstance(v, float) else str(v).lower() for v in self.values)


Space = Range | Choices


def _number(value: float) -> str:
    return repr(int(value)) if isinstance(value, int) else repr(value)


@dataclass(frozen=True)
class FieldKind:
    """What one flag's values are: ``int``, ``float``, ``bool``, ``str`` (with its choices) or the hidden sizes."""

    name: str
    scalar: type
    choices: tuple[str, ...] | None = None
    sizes: bool = False  # --hidden: a list of layer sizes

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def numeric(self) -> bool:
        return self.scalar in (int, float)

    def parse_one(self, text: str) -> Any:
        """One value, as ``mlp-torch train`` would read it; :class:`UsageError` if it is not one."""
        text = text.strip()
        if self.sizes:
            try:
                return [int(t) for t in text.split()]
            except ValueError:
                raise UsageError(f"{self.flag}: {text!r} is not a list of layer sizes such as '1024 1024'") from None
        if self.scalar is bool:
            if text.lower() in TRUE_WORDS + FALSE_WORDS:
                return text.lower() in TRUE_WORDS
            raise UsageError(f"{self.flag}: {text!r} is not true or false")
        if self.scalar is int:
            try:
                return int(text)
            except ValueError:
                raise UsageError(f"{self.flag} takes integers; {text!r} is not one") from None
        if self.scalar is float:
            try:
                value = float(text)
            except ValueError:
                raise UsageError(f"{self.flag}: {text!r} is not a number") from None
            if not math.isfinite(value):
                raise UsageError(f"{self.flag}: {text!r} is not a finite number")
            return value
        if self.choices is not None and text not in self.choices:
            raise UsageError(f"{self.flag}: {text!r} is not one of {', '.join(self.choices)}")
        return text


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def field_kinds() -> dict[str, FieldKind]:
    """The searchable flags: every numeric, boolean and choice field of the config, and ``hidden``."""
    kinds: dict[str, FieldKind] = {}
    for cls in (TrainConfig, DataOptions):
        hints = typing.get_type_hints(cls)
        for name, field in _fields(cls).items():
            if name in (*NOT_SWEEP_FLAGS, *NOT_SEARCHABLE, "data") or (cls is DataOptions and name == "seed"):
                continue
            hint = hints[name]
            if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
                (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
            if name == "hidden":
                kinds[name] = FieldKind(name, int, sizes=True)
            elif hint in (int, float, bool):
                kinds[name] = FieldKind(name, hint)
            elif hint is str and "choices" in field.metadata:
                kinds[name] = FieldKind(name, str, tuple(field.metadata["choices"]))
    return kinds


def parse_flag(kind: FieldKind, text: str) -> Any:
    """A flag's text as one value (as ``train`` reads it) or as a :class:`Range` / :class:`Choices`.

    Raises:
        UsageError: one line naming the flag, the text and what is wrong with it.
    """
    spec = text.strip()
    where = f"{kind.flag} {spec!r}"
    if kind.sizes and "|" in spec:
        parts = spec.split("|")
    elif ".." in spec:
        return _parse_range(kind, spec, where)
    elif "," in spec and not kind.sizes:
        parts = spec.split(",")
    else:
        return kind.parse_one(spec)
    if any(not p.strip() for p in parts):
        raise UsageError(f"{where}: an empty choice; separate values by {'|' if kind.sizes else ','}")
    values = tuple(kind.parse_one(p) for p in parts)
    if len(set(map(repr, values))) != len(values):
        raise UsageError(f"{where} names a value twice")
    if kind.sizes and any(not v for v in values):
        raise UsageError(f"{where}: every choice needs at least one layer size")
    return Choices(values)


def _parse_range(kind: FieldKind, spec: str, where: str) -> Range:
    body, _, option = spec.partition(":")
    if option not in ("", "log"):
        raise UsageError(f"{where}: unknown range option {option!r}; write LOW..HIGH or LOW..HIGH:log")
    if not kind.numeric:
        what = "layer sizes" if kind.sizes else "true/false values" if kind.scalar is bool else "names"
        sep = "|" if kind.sizes else ","
        raise UsageError(f"{where}: a range needs a numeric flag; list the {what} instead, separated by {sep}")
    low_text, _, high_text = body.partition("..")
    low, high = kind.parse_one(low_text), kind.parse_one(high_text)
    if not low < high:
        raise UsageError(f"{where}: LOW must be below HIGH")
    if option == "log" and low <= 0:
        raise UsageError(f"{where}: a log range needs LOW > 0")
    return Range(low, high, log=option == "log", integer=kind.scalar is int)


# ------------------------------------------------------------------------------ Optuna's view


def to_optuna(space: Space) -> Any:
    """The Optuna distribution of ``space``; layer lists become strings (``"1024 1024"``)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(space, Range):
        if space.integer:
            return IntDistribution(int(space.low), int(space.high), log=space.log)
        return FloatDistribution(float(space.low), float(space.high), log=space.log)
    return CategoricalDistribution([_to_param(v) for v in space.values])


def grid_values(space: Space, flag: str) -> list[Any]:
    """The values ``--sampler grid`` walks through; a range has none, and says so."""
    if isinstance(space, Range):
        raise UsageError(f"--sampler grid needs choices, not the range {flag} {space}; list values: A,B,C")
    return [_to_param(v) for v in space.values]


def _to_param(value: Any) -> Any:
    return " ".join(map(str, value)) if isinstance(value, list) else value


def config_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's Optuna parameters as config values: ``{"hidden": "1024 1024"}`` -> ``{"hidden": [1024, 1024]}``."""
    return {k: [int(s) for s in v.split()] if k == "hidden" else v for k, v in params.items()}


# ------------------------------------------------------------------------------ configs


def make_config(values: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from flag values by field name (data fields included), as ``train`` builds it.

    ``seed`` is the run's (``--seed`` seeds the data too), never only the data's.
    """
    data_fields = set(_fields(DataOptions)) - {"seed"}
    train = {k: v for k, v in values.items() if k not in data_fields}
    data = {k: v for k, v in values.items() if k in data_fields}
    return TrainConfig(**train, data=DataOptions(**data))


def check_space(fixed: Mapping[str, Any], spaces: Mapping[str, Space]) -> None:
    """Refuse, before any trial, a space holding a value ``train`` would refuse (each end of a range, each choice).

    Raises:
        UsageError: ``--momentum '0..1': --momentum must be in [0, 1), got 1.0``.
    """
    kinds = field_kinds()
    make_config(fixed)  # the fixed flags alone
    for name, space in spaces.items():
        candidates = (space.low, space.high) if isinstance(space, Range) else space.values
        for value in candidates:
            try:
                make_config({**fixed, name: value})
            except UsageError as err:
                raise UsageError(f"{kinds[name].flag} '{space}': {err}") from None
