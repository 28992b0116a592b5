"""Ctrl-C, SIGTERM and SIGHUP sent to a real ``mlp-torch train`` process: save, say how to resume, resume exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mlp_torch.cli import main

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

# Small and quick, with a constant learning rate so that the total epoch count (100000 in the
# interrupted run, a few in the reference run) does not change the schedule.
FLAGS = [
    "--dataset",
    "synthetic",
    "--image-size",
    "8",
    "--hidden",
    "16",
    "--no-progress",
    "--no-cache",
    "--device",
    "cpu",
    "--schedule",
    "constant",
    "--warmup-epochs",
    "0",
    "--histogram-every",
    "0",
]
START_TIMEOUT = 120  # seconds for a loaded 2-core machine to import torch and finish one epoch


def start_training(runs_dir: Path, log_dir: Path) -> tuple[subprocess.Popen, Path, Path]:
    out, err = log_dir / "stdout.txt", log_dir / "stderr.txt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlp_torch", "train", *FLAGS, "--epochs", "100000", "--runs-dir", str(runs_dir)],
        stdout=out.open("w"),
        stderr=err.open("w"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return proc, out, err


def wait_for_first_checkpoint(proc: subprocess.Popen, runs_dir: Path, err: Path) -> Path:
    """The run directory, once its first ``last.pt`` exists (the signal handlers are installed by then)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = list(runs_dir.glob("*/checkpoints/last.pt"))
        if found:
            return found[0].parent.parent
        assert proc.poll() is None, f"training exited early with {proc.returncode}: {err.read_text()}"
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint after {START_TIMEOUT} s: {err.read_text()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def model_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model_state"]


@pytest.mark.parametrize(
    "signum, exit_code",
    [(signal.SIGINT, 130), (signal.SIGTERM, 143), (getattr(signal, "SIGHUP", None), 129)],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],  # SIGHUP: a closed terminal or a dropped ssh session
)
def test_a_signal_saves_last_pt_prints_the_resume_command_and_resume_continues(tmp_path, capsys, signum, exit_code):
    runs = tmp_path / "runs"
    proc, out, err = start_training(runs, tmp_path)
    try:
        run_dir = wait_for_first_checkpoint(proc, runs, err)
        # while it trains, a second process may not resume it
        assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 1
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert f"{run_dir} is being trained by another process (pid {proc.pid})" in line
        proc.send_signal(signum)
        proc.wait(timeout=60)
    finally:
        stop(proc)
    stdout, stderr = out.read_text(), err.read_text()
    assert proc.returncode == exit_code, stderr
    assert "Traceback" not in stdout + stderr
    assert f"{signal.Signals(signum).name} received" in stderr
    assert f"mlp-torch train --resume {run_dir}" in stdout
    last = run_dir / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)  # a checkpoint can never run code
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["signal"] == signal.Signals(signum).name
    done = ckpt["epoch"]
    assert done >= 1 and metrics["epochs"] == done
    assert not list(run_dir.glob("checkpoints/*.tmp"))

    # Resume in-process for one more epoch (and the rest of a part-done one, if the signal came mid-epoch).
    assert main(["train", "--resume", str(run_dir), "--epochs", str(done + 1), "--no-progress"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, done + 2))
    assert torch.load(last, weights_only=True)["epoch"] == done + 1

    if signum == signal.SIGINT:
        # Exactness: the same run, never interrupted, ends with the same parameters, bit for bit.
        reference = tmp_path / "reference"
        assert main(["train", *FLAGS, "--epochs", str(done + 1), "--runs-dir", str(reference)]) == 0
        expected = model_state(next(reference.glob("*/checkpoints/last.pt")))
        got = model_state(last)
        assert expected.keys() == got.keys()
        for name in expected:
            assert torch.equal(expected[name], got[name]), name


def test_a_second_ctrl_c_aborts_at_once_without_a_traceback_or_a_damaged_file(tmp_path):
    runs = tmp_path / "runs"
    proc, out, err = start_training(runs, tmp_path)
    try:
        run_dir = wait_for_first_checkpoint(proc, runs, err)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        stop(proc)
    stdout, stderr = out.read_text(), err.read_text()
    # Either the second signal aborted ("aborted") or the first had already saved and exited.
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stdout + stderr
    assert "aborted" in stderr or "mlp-torch train --resume" in stdout
    for path in (run_dir / "checkpoints").iterdir():
        assert path.suffix == ".pt", f"left behind: {path.name}"
        assert torch.load(path, weights_only=True)["epoch"] >= 1
