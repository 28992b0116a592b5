"""``mlp-torch sweep`` end to end: worker processes sharing one journal, continuing a study, a worker
killed with SIGKILL, Ctrl-C, a diverging trial, trials whose sweep was killed, and ``sweep.json``.

Tiny trials (8x8 synthetic images, 40 per class, hidden 8) so that each takes about a second.
The sweep runs in this process (its workers are forked from a fork server that imports torch once
for the whole session); the tests that kill or interrupt something act from a second thread.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from mlp_torch.cli import main
from mlp_torch.training.rundir import _flock_holder

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals, flock and /proc/locks")

TINY = [
    "--dataset",
    "synthetic",
    "--image-size",
    "8",
    "--synthetic-train-per-class",
    "40",
    "--synthetic-test-per-class",
    "20",
    "--hidden",
    "8",
    "--no-cache",
    "--histogram-every",
    "0",
    "--device",
    "cpu",
]
TINY_FIELDS = {  # the same, as config fields
    "dataset": "synthetic",
    "image_size": 8,
    "synthetic_train_per_class": 40,
    "synthetic_test_per_class": 20,
    "hidden": [8],
    "cache": False,
    "histogram_every": 0,
    "device": "cpu",
}
TIMEOUT = 120  # seconds for a loaded 2-core machine to start a worker and train a trial


def sweep(sweep_dir: Path, *flags: str) -> int:
    return main(["sweep", *TINY, "--sweep-dir", str(sweep_dir), *flags])


def summary(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep.json").read_text())


def study_trials(sweep_dir: Path) -> list:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep_dir / "study.journal"))
    )
    return optuna.load_study(study_name=sweep_dir.name, storage=storage).get_trials()


def assert_run_dir(path: str, status: str) -> None:
    """An ordinary run directory whose metrics.json says ``status`` (a run that diverged in its first
    epoch has no checkpoint yet)."""
    run = Path(path)
    assert (run / "config.json").is_file() and list(run.glob("events.out.tfevents.*"))
    assert json.loads((run / "metrics.json").read_text())["status"] == status
    assert (run / "checkpoints" / "last.pt").is_file() or status == "diverged"


def wait_for(predicate, what: str):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def training_pid(sweep_dir: Path, run_name: str = "") -> tuple[Path, int]:
    """A run being trained (its first epoch saved; its name ends with ``run_name``) and the pid of the
    worker holding its lock."""

    def find():
        for last in sorted(sweep_dir.glob(f"trials/*{run_name}*/checkpoints/last.pt")):
            pid = _flock_holder(last.parent.parent / ".lock")
            if pid is not None and pid != os.getpid():
                return last.parent.parent, pid
        return None

    return wait_for(find, "a trial's first epoch")


# ------------------------------------------------------------------------------ the normal course


def test_two_workers_share_one_journal_and_a_rerun_continues_the_study(tmp_path, capsys):
    s = tmp_path / "S"
    flags = ["--epochs", "2", "--lr", "1e-3..1e-1:log", "--workers", "2"]
    assert sweep(s, *flags, "--trials", "3") == 0
    first = capsys.readouterr().out
    progress = [line.split("]")[0] for line in first.splitlines() if "] trial " in line]
    assert progress == ["[1/3", "[2/3", "[3/3"]
    assert sweep(s, *flags, "--trials", "5") == 0
    out = capsys.readouterr().out
    assert out.count("/5] trial ") == 2 and "3 there already" in out

    result = summary(s)
    assert set(result) == {"study", "storage", "trials", "best"}
    assert result["study"] == "S" and result["storage"] == str(s / "study.journal")
    trials = result["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2, 3, 4]
    for t in trials:
        assert set(t) == {"number", "state", "params", "value", "run_dir"}
        assert t["state"] == "COMPLETE" and 0 <= t["value"] <= 1
        assert set(t["params"]) == {"lr"} and 1e-3 <= t["params"]["lr"] <= 1e-1
        assert_run_dir(t["run_dir"], "completed")
    assert len({t["run_dir"] for t in trials}) == 5 and len({t["params"]["lr"] for t in trials}) == 5
    assert {Path(t["run_dir"]).parent for t in trials} == {(s / "trials").absolute()}

    # two worker processes (two lock files) added trials to the one journal
    assert len({t.user_attrs["worker_lock"] for t in study_trials(s)}) >= 2

    best = result["best"]
    assert best["value"] == max(t["value"] for t in trials)
    assert best["command"].startswith("mlp-torch train --hidden 8 --dataset synthetic")
    assert f"--lr {best['params']['lr']!r}" in best["command"]
    assert "train it again with:\n  " + best["command"] in out and "test acc" in out

    # a trial is an ordinary run: eval reads it
    assert main(["eval", best["run_dir"], "--split", "val"]) == 0
    # the same command with the study's plan changed is refused, and the study is untouched
    capsys.readouterr()
    assert sweep(s, "--epochs", "3", "--lr", "1e-3..1e-1:log", "--trials", "6") == 2
    assert "was started with other settings (--epochs: 2 -> 3)" in capsys.readouterr().err
    assert len(summary(s)["trials"]) == 5
    # the budget is reached: nothing to run
    assert sweep(s, *flags, "--trials", "5") == 0
    assert "nothing to run" in capsys.readouterr().out


def test_a_diverging_trial_is_failed_and_the_sweep_goes_on(tmp_path, capsys):
    s = tmp_path / "S"
    code = sweep(s, "--epochs", "2", "--batch-size", "16", "--lr", "0.01,1e30", "--sampler", "grid", "--trials", "5")
    assert code == 0  # the grid has two points: the sweep stops there
    trials = {t["params"]["lr"]: t for t in summary(s)["trials"]}
    assert set(trials) == {0.01, 1e30}
    assert trials[0.01]["state"] == "COMPLETE" and trials[1e30]["state"] == "FAIL"
    assert trials[1e30]["value"] is None and summary(s)["best"]["params"] == {"lr": 0.01}
    assert_run_dir(trials[1e30]["run_dir"], "diverged")
    out = capsys.readouterr().out
    assert "trial 0 FAIL (diverged)" in out and "training diverged at epoch 1" in out


# ------------------------------------------------------------------------------ when things go wrong


def test_a_worker_killed_with_sigkill_leaves_its_trial_failed_and_the_rest_go_on(tmp_path, capsys):
    s = tmp_path / "S"
    # the study's first trials, queued: a long one to kill (trial 0), then short ones
    s.mkdir()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(s / "study.journal")))
    study = optuna.create_study(study_name="S", storage=storage, direction="maximize")
    for epochs in (100_000, 2, 2, 2):  # an epoch takes a few ms: trial 0 runs until it is killed
        study.enqueue_trial({"epochs": epochs})
    codes: list[int] = []
    flags = ["--epochs", "2,100000", "--lr", "0.01", "--trials", "3", "--workers", "2", "--pruner", "none"]
    runner = threading.Thread(target=lambda: codes.append(sweep(s, *flags)))
    runner.start()
    victim, pid = training_pid(s, "S-trial0000")
    os.kill(pid, signal.SIGKILL)
    runner.join(TIMEOUT)
    assert codes == [0]
    trials = summary(s)["trials"]
    assert [(t["state"], t["params"]["epochs"]) for t in trials] == [
        ("FAIL", 100_000),
        ("COMPLETE", 2),
        ("COMPLETE", 2),
        ("COMPLETE", 2),  # the killed trial did not use up the budget: a third one ran
    ]
    assert trials[0]["run_dir"] == str(victim) and trials[0]["value"] is None
    assert len({t["run_dir"] for t in trials}) == 4
    assert study_trials(s)[0].user_attrs["outcome"] == "killed"
    assert f"(pid {pid}) was killed by SIGKILL" in capsys.readouterr().out


def test_ctrl_c_saves_the_running_trial_as_interrupted_and_a_rerun_runs_it_again(tmp_path, capsys):
    s = tmp_path / "S"
    # 900 training images: 60 epochs take a second or two, time to stop the trial after its first
    flags = ["--synthetic-train-per-class", "300", "--epochs", "60", "--lr", "1e-3..1e-1:log", "--trials", "1"]
    flags += ["--pruner", "none"]

    def interrupt():
        training_pid(s)
        os.kill(os.getpid(), signal.SIGINT)  # the sweep runs in this (main) thread: as a Ctrl-C in its terminal

    helper = threading.Thread(target=interrupt)
    helper.start()
    assert sweep(s, *flags) == 130
    helper.join()
    out, err = capsys.readouterr()
    assert "SIGINT received: no new trial starts" in err
    (trial,) = summary(s)["trials"]
    assert trial["state"] == "FAIL"
    assert_run_dir(trial["run_dir"], "interrupted")  # last.pt holds the position: train --resume continues it
    assert "continue it with mlp-torch train --resume" in out

    assert sweep(s, *flags) == 0  # the same command: the interrupted trial's parameters run again
    first, again = summary(s)["trials"]
    assert again["state"] == "COMPLETE" and again["params"] == first["params"]
    assert again["run_dir"] != first["run_dir"]
    assert study_trials(s)[1].user_attrs["retry_of"] == 0


def test_a_trial_whose_sweep_was_killed_is_marked_lost_and_run_again(tmp_path):
    s = tmp_path / "S"
    flags = ["--epochs", "1", "--lr", "0.01,0.02", "--sampler", "grid", "--trials", "2"]
    assert sweep(s, *flags, "--trials", "1") == 0
    # what a SIGKILLed sweep leaves: a RUNNING trial whose worker's lock nobody holds
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(s / "study.journal")))
    study = optuna.load_study(study_name="S", storage=storage)
    orphan = study.ask({"lr": optuna.distributions.CategoricalDistribution([0.01, 0.02])})
    lock = s / ".workers" / "gone.lock"
    lock.parent.mkdir(exist_ok=True)
    lock.touch()
    orphan.set_user_attr("worker_lock", str(lock))
    orphan.set_user_attr("host", socket.gethostname())

    assert sweep(s, *flags) == 0
    trials = study_trials(s)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[1].user_attrs["outcome"] == "lost" and trials[2].user_attrs["retry_of"] == 1
    assert trials[2].params == trials[1].params


# ------------------------------------------------------------------------------ scoring and pruning


def test_seeds_train_each_configuration_with_each_seed_and_score_the_mean(tmp_path):
    s = tmp_path / "S"
    assert sweep(s, "--epochs", "1", "--lr", "0.01,0.02", "--seeds", "2", "--seed", "5", "--trials", "1") == 0
    best = summary(s)["best"]
    assert len(best["run_dirs"]) == 2 and best["run_dir"] == best["run_dirs"][0]
    runs = [json.loads((Path(d) / "config.json").read_text())["config"] for d in best["run_dirs"]]
    assert [r["seed"] for r in runs] == [5, 6] and [r["data"]["seed"] for r in runs] == [5, 6]
    scores = [
        json.loads((Path(d) / "metrics.json").read_text())["best_val_balanced_accuracy"] for d in best["run_dirs"]
    ]
    assert best["value"] == pytest.approx(sum(scores) / 2, abs=1e-12)
    assert " --seed 5 " in best["command"]


def test_the_hparams_tab_shows_a_searched_data_option(tmp_path):
    s = tmp_path / "S"
    assert sweep(s, "--epochs", "1", "--augment-crop", "0,3", "--sampler", "grid", "--trials", "2") == 0
    for trial in summary(s)["trials"]:
        events = EventAccumulator(trial["run_dir"])
        events.Reload()
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        assert start.hparams["augment_crop"].number_value == trial["params"]["augment_crop"]
        assert start.hparams["image_size"].number_value == 8 and "cache_dir" not in start.hparams


class FakeTrial:
    """An Optuna trial that wants to be pruned from step ``prune_from`` on."""

    def __init__(self, prune_from: int) -> None:
        self.prune_from = prune_from
        self.reports: list[tuple[float, int]] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.reports[-1][1] >= self.prune_from


@pytest.mark.parametrize("last_step, pruned", [(9, True), (1, False)])
def test_the_pruning_callback_reports_each_epoch_and_stops_the_run_when_told(tmp_path, last_step, pruned):
    from mlp_torch.sweep.space import make_config
    from mlp_torch.sweep.trial import ReportToPruner, mark_pruned, train_quietly

    epochs = 5 if pruned else 2
    config = make_config({**TINY_FIELDS, "epochs": epochs, "runs_dir": tmp_path, "progress": False})
    trial = FakeTrial(prune_from=1)
    callback = ReportToPruner(trial, first_step=0, last_step=last_step)
    metrics = train_quietly(config, [callback])
    history = [record["val_balanced_accuracy"] for record in metrics["history"]]
    assert trial.reports == [(v, step) for step, v in enumerate(history)]
    if pruned:  # stopped after epoch 2 of 5, with last.pt saved
        assert callback.pruned_at == 2 and metrics["epochs"] == 2 and metrics["status"] == "interrupted"
        mark_pruned(metrics, callback.pruned_at)
        saved = json.loads((Path(metrics["run_dir"]) / "metrics.json").read_text())
        assert saved["status"] == "pruned" and saved["pruned_after_epoch"] == 2 and "signal" not in saved
    else:  # the trial's very last epoch is never pruned: there is nothing left to save
        assert callback.pruned_at is None and metrics["status"] == "completed"


def test_a_trials_last_epoch_is_never_pruned_when_the_epochs_are_searched(tmp_path):
    from mlp_torch.sweep import Choices, SweepPlan
    from mlp_torch.sweep.trial import run_trial

    plan = SweepPlan(dict(TINY_FIELDS), {"epochs": Choices((1, 2))}, trials=1)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))  # prune all
    study.enqueue_trial({"epochs": 1})
    trial = study.ask(plan.distributions())
    assert run_trial(study, trial._trial_id, plan, tmp_path).outcome == "completed"
    assert study.trials[0].state.name == "COMPLETE"
