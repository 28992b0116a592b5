"""What a sweep reports: a line per finished trial, ``sweep.json``, and the table of the best trials.

Trials are ranked by their value, the mean best validation balanced accuracy over their seeds;
test scores are shown beside them in the final table and never used to choose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..training.config import TrainConfig
from .plan import SweepPlan
from .space import config_values

TOP = 10
# Failures that are the configuration's own result (a diverging learning rate, a combination of
# flags train refuses): they count toward --trials. A trial interrupted, or whose process was
# killed, says nothing about its configuration: it does not count, and a rerun runs another.
COUNTED_FAILURES = ("diverged", "error", "crashed")


def outcome(trial: Any) -> str:
    """How a trial ended, in mlp_torch's words: ``completed``, ``pruned``, ``diverged``, ``error``, ``crashed``,
    ``interrupted``, ``killed``, ``lost`` (its sweep was killed), ``running`` or ``waiting`` (queued)."""
    state = trial.state.name
    if state in ("RUNNING", "WAITING"):
        return state.lower()
    if state == "COMPLETE":
        return "completed"
    if state == "PRUNED":
        return "pruned"
    return str(trial.user_attrs.get("outcome", "lost"))  # failed by Optuna itself: a stale heartbeat


def counts_toward_total(trial: Any) -> bool:
    """Whether ``trial`` has used up one of ``--trials``: finished with a result, or running (not queued)."""
    return outcome(trial) in ("completed", "pruned", "running", *COUNTED_FAILURES)


def ranked(trials: Sequence[Any]) -> list[Any]:
    """The completed trials, best value first (ties: the earlier trial first)."""
    done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    return sorted(done, key=lambda t: (-t.value, t.number))


def best_trial(trials: Sequence[Any]) -> Any | None:
    """The best completed trial (:func:`ranked`'s first), ``None`` before one has completed."""
    order = ranked(trials)
    return order[0] if order else None


def run_dir(trial: Any) -> str | None:
    dirs = trial.user_attrs.get("run_dirs") or []
    return dirs[0] if dirs else None


def summary(
    study: Any,
    trials: Sequence[Any],
    storage: str,
    plan: SweepPlan,
    command_for: Callable[[TrainConfig], str],
    trials_dir: str,
) -> dict[str, Any]:
    """``sweep.json``: the study, its storage, every trial (``trials``: the study's, as just read), and the
    best (with its test scores and command)."""
    entries = [
        {
            "number": t.number,
            "state": t.state.name,
            "params": config_values(t.params),
            "value": t.value if t.state.name in ("COMPLETE", "PRUNED") else None,
            "run_dir": run_dir(t),
        }
        for t in trials
    ]
    top = best_trial(trials)
    return {
        "study": study.study_name,
        "storage": storage,
        "trials": entries,
        "best": None if top is None else best_entry(top, plan, command_for, trials_dir),
    }


def best_entry(trial: Any, plan: SweepPlan, command_for: Callable[[TrainConfig], str], trials_dir: str) -> dict:
    attrs = trial.user_attrs
    config = plan.trial_config(trial.params, 0, plan.base.runs_dir, "")
    return {
        "number": trial.number,
        "params": config_values(trial.params),
        "value": trial.value,
        "run_dir": run_dir(trial),
        "run_dirs": list(attrs.get("run_dirs", [])),
        "val_accuracy": attrs.get("val_accuracy"),
        "test_accuracy": attrs.get("test_accuracy"),
        "test_balanced_accuracy": attrs.get("test_balanced_accuracy"),
        "train_seconds": attrs.get("train_seconds"),
        "command": command_for(config),
    }


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def progress_line(trial: Any, done: int, total: int, best: Any | None, elapsed: float, plan: SweepPlan) -> str:
    """``[3/8] trial 2 COMPLETE val 91.20 %  best 93.10 % (trial 1)  0:00:07  --lr 0.0123``.

    ``done/total`` counts the trials that use up ``--trials``; a failed trial says why on a second line.
    """
    if trial.state.name in ("COMPLETE", "PRUNED"):
        result = f"{trial.state.name} val {percent(trial.value)}"
    else:
        result = f"{trial.state.name} ({outcome(trial)})"
    best_text = f"best {percent(best.value)} (trial {best.number})" if best is not None else "best —"
    line = (
        f"[{done}/{total}] trial {trial.number} {result:<20} {best_text}  {clock(elapsed)}  {plan.flags(trial.params)}"
    )
    message = trial.user_attrs.get("message")
    return line + (f"\n    {message}" if message and trial.state.name == "FAIL" else "")


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def table(trials: Sequence[Any], plan: SweepPlan, top: int = TOP) -> str:
    """The ``top`` completed trials: rank, trial, validation and test scores (mean over seeds), time, flags."""
    rows = ranked(trials)[:top]
    if not rows:
        return "no completed trial yet"
    header = ("#", "trial", "val bal acc", "test acc", "test bal acc", "train time", "flags")
    body = [
        (
            str(rank),
            str(t.number),
            percent(t.value),
            percent(t.user_attrs.get("test_accuracy")),
            percent(t.user_attrs.get("test_balanced_accuracy")),
            f"{t.user_attrs.get('train_seconds', 0.0):.1f} s",
            plan.flags(t.params),
        )
        for rank, t in enumerate(rows, start=1)
    ]
    widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in (header, *body)]
    scored = f"mean over {plan.seeds} seeds" if plan.seeds > 1 else "one seed"
    return "\n".join([f"top {len(rows)} of the completed trials by validation ({scored}):", *lines])
