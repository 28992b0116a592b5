"""Hyperparameter sweeps on Optuna: the layer between training and the command line.

    plan = SweepPlan(fixed={"dataset": "synthetic", "epochs": 2}, spaces={"lr": Range(1e-3, 1e-1, log=True)}, trials=8)
    outcome = Sweep(plan, StorageSpec(None, Path("S")), "S", Path("S"), workers=2, command_for=str).run()

:mod:`~mlp_torch.sweep.space` reads the flags' search-space grammar, :mod:`~mlp_torch.sweep.plan`
holds what a sweep trains, :mod:`~mlp_torch.sweep.storage` opens Optuna's storages,
:mod:`~mlp_torch.sweep.runner` schedules trials over worker processes
(:mod:`~mlp_torch.sweep.worker`), each of which trains one trial at a time
(:mod:`~mlp_torch.sweep.trial`: ordinary runs through :func:`~mlp_torch.training.fit`), and
:mod:`~mlp_torch.sweep.report` writes ``sweep.json`` and the table of the best trials.
"""

from .plan import SweepPlan
from .runner import Sweep, SweepOutcome
from .space import Choices, Range, field_kinds, parse_flag
from .storage import StorageSpec

__all__ = ["Choices", "Range", "StorageSpec", "Sweep", "SweepOutcome", "SweepPlan", "field_kinds", "parse_flag"]
