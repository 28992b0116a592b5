"""Flags made from the config dataclasses, so that every default is written once: in the field.

Each field of :class:`~mlp_torch.training.TrainConfig` and :class:`~mlp_torch.data.DataOptions`
is a flag: ``batch_size`` -> ``--batch-size``, its type from the annotation (int, float, str,
Path; bool as ``--flag/--no-flag``; ``list[int]`` as any number of values; ``X | None``
as X with ``None`` for "not given"), its default from the dataclass (``--help`` shows it), and
its help text, choices and metavar from the field's metadata (:func:`mlp_torch.utils.option`).
A new field is a new flag, with nothing to add here.

Commands take the subsets they need: ``train`` all of them, ``compare`` the model and data
flags, ``data`` and ``bench`` the data flags. ``--seed`` is each command's own and seeds the
data too (``DataOptions.seed`` is left out).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..data import DataOptions
from ..training.config import TrainConfig

MODEL_FIELDS = ("model", "hidden", "activation", "output", "backend")
DATA_FIELDS = tuple(f.name for f in dataclasses.fields(DataOptions) if f.name != "seed")


def add_fields(group: argparse._ActionsContainer, cls: type, names: Iterable[str], **defaults: Any) -> None:
    """Add one flag per named field of the dataclass ``cls`` to ``group``.

    Args:
        group: a parser or an argument group.
        cls: ``TrainConfig`` or ``DataOptions``.
        names: the fields to add, in the order ``--help`` lists them.
        defaults: a command's own default for a field (``compare`` trains nothing, so it defaults
            to synthetic data); shown by ``--help`` like any other.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in names:
        field = fields[name]
        default = defaults[name] if name in defaults else _default(field)
        group.add_argument("--" + name.replace("_", "-"), default=default, **_flag(cls, field, hints[name]))


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _flag(cls: type, field: dataclasses.Field, hint: Any) -> dict[str, Any]:
    """``add_argument`` keywords (all but the default) for one field."""
    meta = field.metadata
    kwargs: dict[str, Any] = {key: meta[key] for key in ("help", "choices", "metavar") if key in meta}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: None is "not given"
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if "parse" in meta:
        kwargs["type"] = meta["parse"]
    elif hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(hint) is list:
        kwargs.update(type=typing.get_args(hint)[0], nargs="*")
    elif hint in (int, float, str, Path):
        kwargs["type"] = hint
    else:
        raise TypeError(f"{cls.__name__}.{field.name}: no flag for {hint}; give it a parse= in its option()")
    return kwargs


def values(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The parsed values of the named fields, as keyword arguments for the dataclass."""
    return {name: getattr(args, name) for name in names}


def add_model_arguments(parser: argparse.ArgumentParser, names: Iterable[str] = MODEL_FIELDS) -> None:
    """Add the model flags (``--model``, ``--hidden``, ``--activation``, ``--output``, ``--backend``), group "model".

    Args:
        parser: the subcommand's parser.
        names: the model fields to add (``compare`` runs every backend and leaves ``backend`` out).
    """
    add_fields(parser.add_argument_group("model"), TrainConfig, names)


def model_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``build_model`` keyword arguments (all but ``in_features``/``num_classes``) from parsed flags."""
    kwargs: dict[str, Any] = {
        "kind": args.model,
        "hidden": list(args.hidden),
        "activation": args.activation,
        "output": args.output,
    }
    if hasattr(args, "backend"):
        kwargs["backend"] = args.backend
    return kwargs


def add_data_arguments(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """Add every data flag in a group "data" (``--seed`` is left to the command).

    Args:
        parser: the subcommand's parser.
        defaults: the command's own defaults, e.g. ``dataset="synthetic"``.
    """
    add_fields(parser.add_argument_group("data"), DataOptions, DATA_FIELDS, **defaults)


def data_options_from_args(args: argparse.Namespace, **given: Any) -> DataOptions:
    """The :class:`DataOptions` that flags added by :func:`add_data_arguments` describe.

    Args:
        args: the parsed command line.
        given: fields the command sets itself, e.g. ``seed=args.seed``.
    """
    return DataOptions(**values(args, DATA_FIELDS), **given)


# ------------------------------------------------------------------------------ sweeps


class BooleanOrSpace(argparse.Action):
    """``--flag`` (true), ``--no-flag`` (false), or ``--flag SPEC`` (e.g. ``true,false``: a search space)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        negative = ["--no-" + s[2:] for s in option_strings if s.startswith("--")]
        super().__init__([*option_strings, *negative], dest, nargs="?", **kwargs)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        if option is not None and option.startswith("--no-"):
            if values is not None:
                parser.error(f"{option} takes no value (for a search space write {option.replace('--no-', '--')} SPEC)")
            values = False
        setattr(namespace, self.dest, True if values is None else values)


def add_space_fields(group: argparse._ActionsContainer, cls: type, names: Iterable[str], searchable: set[str]) -> None:
    """Like :func:`add_fields`, but the ``searchable`` fields take their text as given (a value or a
    search space, read by :func:`mlp_torch.sweep.parse_flag`): ``--lr 1e-3..1e-1:log``,
    ``--activation sigmoid,relu``, ``--hidden "512|1024 1024"``, ``--nesterov true,false``.

    Args:
        group: a parser or an argument group.
        cls: ``TrainConfig`` or ``DataOptions``.
        names: the fields to add, in ``--help`` order.
        searchable: the names of the fields that may hold a search space.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in names:
        field = fields[name]
        flag, default = "--" + name.replace("_", "-"), _default(field)
        if name not in searchable:
            group.add_argument(flag, default=default, **_flag(cls, field, hints[name]))
            continue
        meta = field.metadata
        help_text = meta["help"]
        if "choices" in meta:
            help_text += f" (one or more of: {', '.join(meta['choices'])})"
        kwargs: dict[str, Any] = {"help": help_text, "default": default}
        hint = hints[name]
        if bool in typing.get_args(hint) or hint is bool:
            group.add_argument(flag, action=BooleanOrSpace, metavar="SPEC", **kwargs)
        elif typing.get_origin(hint) is list:
            group.add_argument(flag, nargs="*", metavar="N", **kwargs)
        else:
            group.add_argument(flag, metavar="SPEC", **kwargs)


def format_flag(name: str, value: Any) -> list[str]:
    """One field's value as ``mlp-torch train`` reads it: ``["--lr", "0.01"]``, ``["--no-nesterov"]``,
    ``["--hidden", "1024", "1024"]``, ``["--classes", "cat,dog"]``."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else ["--no-" + flag[2:]]
    if name == "classes":
        return [flag, ",".join(value)]
    if isinstance(value, list):
        return [flag, *map(str, value)]
    return [flag, repr(value) if isinstance(value, float) else str(value)]
