"""One trial: its configuration trained with each seed, each epoch reported to the pruner, the study told how it ended.

Each seed is an ordinary ``mlp-torch train`` run in ``SWEEP_DIR/trials/`` (config.json,
metrics.json, TensorBoard, checkpoints), trained by :func:`~mlp_torch.training.fit` with the
default callbacks but the console's, and two of the sweep's own: :class:`RecordRunDir` and
:class:`ReportToPruner`. How a trial ends:

    COMPLETE  every seed trained: value = mean of the best validation balanced accuracies
    PRUNED    the pruner stopped it after an epoch (its metrics.json says "pruned")
    FAIL      "diverged" (a non-finite loss: metrics.json says where), "error" (flags train refuses
              together), "crashed" (a bug: its traceback is printed), or "interrupted" (Ctrl-C,
              SIGTERM: the run saved last.pt and can be resumed with mlp-torch train --resume)
"""

from __future__ import annotations

import contextlib
import math
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DivergenceError, MlpTorchError, WriteError
from ..training import Callback, CallbackList, TrainState, fit, start_run
from ..training.callbacks import default_callbacks
from ..training.config import TrainConfig
from ..training.rundir import write_json
from .plan import SweepPlan, run_name


@dataclass
class TrialResult:
    """What the worker tells the scheduler once a trial has ended (the study has been told already)."""

    number: int
    outcome: str  # completed, pruned, diverged, error, crashed, interrupted


class RecordRunDir(Callback):
    """Add each run directory to the trial's ``run_dirs`` as soon as it exists, so a killed trial still names it."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def on_train_start(self, state: TrainState) -> None:
        dirs = list(self.trial.user_attrs.get("run_dirs", []))
        self.trial.set_user_attr("run_dirs", [*dirs, str(state.run_dir)])


class ReportToPruner(Callback):
    """Report each epoch's validation balanced accuracy; stop the run when the pruner says the trial is poor.

    Seed ``k`` reports its epoch ``e`` (from 1) as step ``k·epochs + e − 1``, so each seed's
    curve is compared with the same seed's curve of other trials. The trial's very last epoch
    is never pruned: there is nothing left to save.
    """

    def __init__(self, trial: Any, first_step: int, last_step: int) -> None:
        self.trial = trial
        self.first_step = first_step
        self.last_step = last_step
        self.pruned_at: int | None = None

    def on_epoch_end(self, state: TrainState) -> None:
        if state.val_result is None:
            return
        step = self.first_step + state.epoch - 1
        self.trial.report(state.val_result.balanced_accuracy, step)
        if step < self.last_step and self.trial.should_prune():
            self.pruned_at = state.epoch
            state.should_stop = True  # the step is done: last.pt is saved, the run ends "interrupted"


def train_quietly(config: TrainConfig, callbacks: list[Callback]) -> dict[str, Any]:
    """``train(config)`` without the console's lines (a sweep prints one line per trial instead)."""
    with start_run(config) as state:
        return fit(state, CallbackList([*default_callbacks(state, console=False), *callbacks]))


def run_trial(
    study: Any, trial_id: int, plan: SweepPlan, runs_dir: Path, callbacks: Sequence[Callback] = ()
) -> TrialResult:
    """Train trial ``trial_id`` of ``study`` with every seed and tell the study how it ended.

    ``KeyboardInterrupt`` (a second Ctrl-C) ends the trial as ``interrupted`` and is not raised on.

    Args:
        study: the study, loaded in this process.
        trial_id: the storage's id of a trial the scheduler asked for (``RUNNING``, parameters set).
        plan: what the sweep trains.
        runs_dir: where the runs go (``SWEEP_DIR/trials``).
        callbacks: more callbacks for every run, after the sweep's own.
    """
    import optuna
    from optuna.trial import TrialState

    trial = optuna.trial.Trial(study, trial_id)
    number = trial.number
    results: list[dict[str, Any]] = []
    try:
        for k in range(plan.seeds):
            config = plan.trial_config(trial.params, k, runs_dir, run_name(study.study_name, number, k, plan.seeds))
            # the trial's own epochs (--epochs may be searched)
            pruner = ReportToPruner(trial, k * config.epochs, plan.seeds * config.epochs - 1)
            # --pruner none: no epoch is reported, so training never writes to the storage; a worker
            # killed then leaves no lock of the study's journal held (the curves are in TensorBoard)
            reporting = [pruner] if plan.pruner != "none" else []
            metrics = train_quietly(config, [RecordRunDir(trial), *reporting, *callbacks])
            if pruner.pruned_at is not None:
                mark_pruned(metrics, pruner.pruned_at)
                return finish(
                    study, trial, "pruned", TrialState.PRUNED, message=f"pruned after epoch {pruner.pruned_at}"
                )
            if metrics["status"] != "completed":  # a signal stopped it: last.pt holds the position
                return finish(study, trial, "interrupted", TrialState.FAIL, message=resume_hint(metrics))
            results.append(metrics)
    except DivergenceError as err:
        return finish(study, trial, "diverged", TrialState.FAIL, message=str(err))
    except KeyboardInterrupt:
        return finish(study, trial, "interrupted", TrialState.FAIL, message="interrupted")
    except MlpTorchError as err:
        return finish(study, trial, "error", TrialState.FAIL, message=str(err))
    except Exception as err:  # a bug: keep its traceback on stderr, and let the sweep go on
        traceback.print_exc()
        return finish(study, trial, "crashed", TrialState.FAIL, message=f"{type(err).__name__}: {err}")
    values = [m["best_val_balanced_accuracy"] for m in results]
    if any(v is None or not math.isfinite(v) for v in values):
        return finish(study, trial, "error", TrialState.FAIL, message="no validation score")
    scores = {
        key: sum(m[key] for m in results) / len(results)
        for key in ("best_val_accuracy", "test_accuracy", "test_balanced_accuracy")
    }
    attrs = {
        "val_accuracy": scores["best_val_accuracy"],
        "test_accuracy": scores["test_accuracy"],
        "test_balanced_accuracy": scores["test_balanced_accuracy"],
        "seed_values": values,
        "train_seconds": sum(m["train_seconds"] for m in results),
    }
    return finish(study, trial, "completed", TrialState.COMPLETE, value=sum(values) / len(values), **attrs)


def finish(study: Any, trial: Any, how: str, state: Any, value: float | None = None, **attrs: Any) -> TrialResult:
    """Record how the trial ended (user attributes ``outcome``, ``message``, scores), then tell the study."""
    for key, item in {"outcome": how, **attrs}.items():
        trial.set_user_attr(key, item)
    # skip_if_finished: the scheduler may have failed it already, having given its worker up for dead
    study.tell(trial.number, value if state.name == "COMPLETE" else None, state=state, skip_if_finished=True)
    return TrialResult(trial.number, how)


def mark_pruned(metrics: dict[str, Any], epoch: int) -> None:
    """Say in the run's ``metrics.json`` that the pruner stopped it (train wrote ``interrupted``)."""
    fixed = {k: v for k, v in metrics.items() if k != "signal"}
    with contextlib.suppress(WriteError):  # the trial's state is what matters; the run's files are a courtesy
        write_json(
            Path(metrics["run_dir"]) / "metrics.json", {**fixed, "status": "pruned", "pruned_after_epoch": epoch}
        )


def resume_hint(metrics: dict[str, Any]) -> str:
    epochs, run = metrics["epochs"], metrics["run_dir"]
    return f"interrupted after {epochs} epoch(s); continue it with mlp-torch train --resume {run}"
