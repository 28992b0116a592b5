"""``SweepPlan``: what a sweep trains (fixed flags, a search space), how trials are scored, and how many.

A study remembers its plan (:meth:`SweepPlan.definition`, stored with the study), so a second
``mlp-torch sweep`` on the same study (the same command rerun to continue it, or the same command
on another machine) must train the same thing, or is refused before it starts a trial.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..training.config import TrainConfig
from .space import Choices, Range, Space, config_values, field_kinds, grid_values, make_config, to_optuna

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
# Where data are and how runs are watched: these may differ between machines and reruns of one study.
LOCAL_FIELDS = (
    "device",
    "check_grads_every",
    "histogram_every",
    "data_root",
    "cache_dir",
    "cache",
    "cifar10_url",
    "cifar10_md5",
    "cifar100_url",
    "cifar100_md5",
    "download_timeout",
)
# The median pruner compares a trial with the median of earlier trials at the same epoch, once
# this many trials have finished, and never on a seed's first epoch (too noisy to judge).
PRUNER_STARTUP_TRIALS = 5
PRUNER_WARMUP_EPOCHS = 1


@dataclass
class SweepPlan:
    """A sweep: the fixed flag values and search spaces (by field name), the trial budget and scoring.

    Args:
        fixed: flag values that do not vary, by field name (data fields included); fields absent
            take their defaults.
        spaces: the searched fields and their :class:`Range` or :class:`Choices`.
        trials: the study's total number of trials (see :func:`mlp_torch.sweep.runner.counts`).
        seeds: each configuration is trained with seeds ``seed … seed + seeds − 1`` and scored by
            the mean of their best validation balanced accuracies.
        sampler: ``tpe``, ``random`` or ``grid``.
        pruner: ``median`` or ``none``.
    """

    fixed: dict[str, Any]
    spaces: dict[str, Space] = field(default_factory=dict)
    trials: int = 20
    seeds: int = 1
    sampler: str = "tpe"
    pruner: str = "median"

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise UsageError(f"--sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise UsageError(f"--pruner {self.pruner!r} is not one of {', '.join(PRUNERS)}")
        if self.trials < 1 or self.seeds < 1:
            raise UsageError(f"--trials and --seeds must be at least 1, got {self.trials} and {self.seeds}")
        if not self.spaces:
            raise UsageError(
                "nothing to search: give at least one flag a space, e.g. --lr 1e-3..1e-1:log or --activation "
                "sigmoid,relu (see mlp-torch sweep --help)"
            )
        base = make_config(self.fixed)
        if base.data.val_fraction <= 0:
            raise UsageError("a sweep chooses by the validation split: --val-fraction must be above 0")
        if self.sampler == "grid":
            self.grid()  # raises for a space a grid cannot list

    @property
    def base(self) -> TrainConfig:
        """The config with every searched field at its default."""
        return make_config(self.fixed)

    @property
    def grid_size(self) -> int | None:
        """How many configurations ``--sampler grid`` has (``None`` for the other samplers)."""
        if self.sampler != "grid":
            return None
        size = 1
        for space in self.spaces.values():
            assert isinstance(space, Choices)
            size *= len(space.values)
        return size

    def distributions(self) -> dict[str, Any]:
        """``{field: Optuna distribution}`` for ``study.ask``."""
        return {name: to_optuna(space) for name, space in self.spaces.items()}

    def grid(self) -> dict[str, list[Any]]:
        return {name: grid_values(space, field_kinds()[name].flag) for name, space in self.spaces.items()}

    def trial_config(self, params: Mapping[str, Any], seed_index: int, runs_dir: Path, name: str) -> TrainConfig:
        """The config of one run of a trial: the fixed flags, the trial's parameters, the seed's offset.

        Raises:
            UsageError: this combination is one ``train`` refuses (each value alone was checked before).
        """
        values = {**self.fixed, **config_values(params)}
        values["seed"] = int(values.get("seed", TrainConfig.seed)) + seed_index
        return make_config({**values, "runs_dir": runs_dir, "name": name, "progress": False})

    def definition(self) -> dict[str, Any]:
        """What the study must agree on: everything that changes a trial's score (JSON)."""
        fixed = {k: v for k, v in self.fixed.items() if k not in LOCAL_FIELDS}
        plan = {
            "fixed": dict(sorted(fixed.items())),
            "spaces": {k: str(v) for k, v in sorted(self.spaces.items())},
            "seeds": self.seeds,
            "sampler": self.sampler,
            "pruner": self.pruner,
        }
        return json.loads(json.dumps(plan, default=str))  # paths as strings, as the storage keeps it

    def flags(self, params: Mapping[str, Any]) -> str:
        """A trial's parameters as flags, for tables: ``--lr 0.0123 --hidden 1024 1024``."""
        kinds = field_kinds()
        parts = []
        for name, value in config_values(params).items():
            if isinstance(value, list):
                text = " ".join(map(str, value))
            elif isinstance(value, bool):
                text = str(value).lower()
            elif isinstance(value, float):
                text = f"{value:.4g}"
            else:
                text = str(value)
            parts.append(f"{kinds[name].flag} {text}")
        return " ".join(parts)


def differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The keys on which two :meth:`SweepPlan.definition` s differ, as ``key: saved -> now``."""
    found = []
    for part in ("fixed", "spaces"):
        a, b = saved.get(part, {}), now.get(part, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                found.append(f"--{key.replace('_', '-')}: {_show(a.get(key))} -> {_show(b.get(key))}")
    for key in ("seeds", "sampler", "pruner"):
        if saved.get(key) != now.get(key):
            found.append(f"--{key}: {saved.get(key)} -> {now.get(key)}")
    return found


def _show(value: Any) -> str:
    return "(not given)" if value is None else " ".join(map(str, value)) if isinstance(value, list) else str(value)


def run_name(study: str, number: int, seed_index: int, seeds: int) -> str:
    """A trial's run name: ``<study>-trial0007`` (``-seed1`` … when it trains several seeds)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", study)[:80] or "study"
    return f"{safe}-trial{number:04d}" + (f"-seed{seed_index}" if seeds > 1 else "")


__all__ = ["PRUNERS", "SAMPLERS", "Range", "SweepPlan", "differences", "run_name"]
