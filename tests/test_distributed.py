"""Data-parallel training: two processes train exactly as one, stop together, and say so when one is lost.

Two processes on the CPU with gloo, on 127.0.0.1, started as ``torchrun`` starts them (its
environment variables) or by ``torchrun`` itself. In float64 the only differences left between
two processes and one are the order of a few additions (each process sums its rows' gradients),
so after two epochs their parameters agree to ~1e-16 relative, far inside the 1e-10 asked; a
process that trained on the wrong rows, weighed a shard wrongly or drew other augmentations
would be off by far more than that.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from PIL import Image

from mlp_torch.cli import main
from mlp_torch.data import DataOptions
from mlp_torch.training import TrainConfig, train

pytestmark = [
    pytest.mark.skipif(
        os.name != "posix" or not dist.is_available() or not dist.is_gloo_available(), reason="POSIX, gloo"
    ),
    pytest.mark.slow,  # each test starts processes that import torch: seconds, on a loaded 2-core machine
]

WORKER = Path(__file__).with_name("distributed_worker.py")
RELATIVE = 1e-10
WAIT = 300  # seconds for two processes to import torch and train a few tiny runs on a loaded machine
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
if sys.platform == "linux":
    ENV["GLOO_SOCKET_IFNAME"] = "lo"  # the loopback interface only

# 20 images per class, 2 held out: 54 training images, 6×6 px, flips and 2-pixel crops (the default)
SYNTHETIC = dict(dataset="synthetic", image_size=6, synthetic_train_per_class=20, synthetic_test_per_class=4)


def config(runs: Path, backend: str, batch_size: int, **data) -> TrainConfig:
    options = DataOptions(**{**SYNTHETIC, "cache": False, **data})
    return TrainConfig(
        hidden=[6],
        backend=backend,
        epochs=2,
        batch_size=batch_size,
        dtype="float64",
        device="cpu",
        runs_dir=runs,
        progress=False,
        histogram_every=0,
        data=options,
    )


def imbalanced_folder(root: Path) -> Path:
    """Random 6×6 images: 12, 6 and 3 training images of classes a, b, c, two test images each."""
    g = torch.Generator().manual_seed(0)
    for name, n in (("a", 12), ("b", 6), ("c", 3)):
        for split, count in (("train", n), ("test", 2)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (6, 6, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], logs: Path, world_size: int = 2) -> list[subprocess.Popen]:
    """``python ARGS`` as ``world_size`` processes that meet on 127.0.0.1, as torchrun would start them."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = {
            **os.environ,
            **ENV,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(world_size),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
        }
        out, err = (logs / f"rank{rank}.{stream}" for stream in ("out", "err"))
        procs.append(subprocess.Popen([sys.executable, *args], env=env, stdout=out.open("w"), stderr=err.open("w")))
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def only_run(runs: Path) -> Path:
    (run,) = runs.iterdir()  # one run directory, however many processes trained it
    return run


def last_params(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model_state"]


def assert_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        relative = float((got[name] - expected[name]).abs().max() / expected[name].abs().max())
        assert relative <= RELATIVE, f"{what}: {name} differs by {relative:.3g} relative"


def test_two_processes_train_as_one_for_every_gradient_path(tmp_path):
    folder = imbalanced_folder(tmp_path / "images")
    weighted = dict(dataset="folder", data_root=folder, val_fraction=0.2, balance="weights")
    cases = {  # the batch sizes cut the 54 training images into unequal shards
        "builtin": config(tmp_path / "builtin", "builtin", 13),  # 7 + 6 rows; the last batch 1 + 1
        "custom": config(tmp_path / "custom", "custom", 53),  # 27 + 26; the last batch 1 + 0: an empty shard
        "manual": config(tmp_path / "manual", "manual", 11),  # 6 + 5; the last batch 5 + 5
        # 10, 5 and 2 training images: class weights, so a shard weighs Σ w_y, not its row count
        "manual-weighted": config(tmp_path / "manual-weighted", "manual", 7, **weighted),
        # stopped after its first epoch and resumed, by the same two processes
        "custom-resumed": config(tmp_path / "custom-resumed", "custom", 53),
    }
    spec = [{"name": name, "config": c.to_dict(), "resume": name.endswith("resumed")} for name, c in cases.items()]
    (tmp_path / "cases.json").write_text(json.dumps(spec))
    procs = launch([str(WORKER), str(tmp_path / "cases.json"), str(tmp_path)], tmp_path)
    try:
        for proc in procs:
            proc.wait(timeout=WAIT)
    finally:
        stop(procs)
    for rank, proc in enumerate(procs):
        assert proc.returncode == 0, (tmp_path / f"rank{rank}.err").read_text()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    for name, c in cases.items():
        # one process alone, here, with the same global batch and seed
        reference = c.__class__.from_dict({**c.to_dict(), "runs_dir": str(tmp_path / "alone" / name)})
        assert train(reference)["status"] == "completed"
        expected = last_params(only_run(tmp_path / "alone" / name))
        got = last_params(only_run(c.runs_dir))
        assert_close(got, expected, name)
        # every process holds the same parameters, bit for bit, each having trained on its rows only
        for rank in ranks:
            assert all(torch.equal(rank[name]["params"][k], got[k]) for k in got), name
        rows = [ranks[0][name]["rows"], ranks[1][name]["rows"]]
        steps = [a + b for a, b in zip(*rows)]
        n = 54 if c.data.dataset == "synthetic" else 17
        batches = [min(c.batch_size, n - i) for i in range(0, n, c.batch_size)]
        assert steps == batches * 2, name
        assert all(abs(a - b) <= 1 for a, b in zip(*rows)), name


def wait_for(path_glob: str, root: Path, procs: list[subprocess.Popen], logs: list[Path]) -> Path:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = list(root.glob(path_glob))
        if found:
            return found[0]
        for proc, log in zip(procs, logs):
            assert proc.poll() is None, f"exited early with {proc.returncode}: {log.read_text()}"
        time.sleep(0.1)
    raise AssertionError(f"nothing matched {path_glob} after {WAIT} s")


FLAGS = [  # a constant learning rate: the interrupted run's huge --epochs must not change the schedule
    *("--dataset", "synthetic", "--image-size", "6", "--synthetic-train-per-class", "20"),
    *("--synthetic-test-per-class", "4", "--no-cache", "--hidden", "6", "--batch-size", "13"),
    *("--dtype", "float64", "--device", "cpu", "--no-progress", "--histogram-every", "0"),
    *("--schedule", "constant", "--warmup-epochs", "0"),
]


def test_sigterm_to_torchrun_stops_both_processes_with_one_last_pt_that_one_process_resumes(tmp_path):
    runs = tmp_path / "runs"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    out, err = tmp_path / "out", tmp_path / "err"
    proc = subprocess.Popen(
        [*torchrun, "-m", "mlp_torch", "train", *FLAGS, "--epochs", "100000", "--runs-dir", str(runs)],
        env={**os.environ, **ENV},
        stdout=out.open("w"),
        stderr=err.open("w"),
    )
    try:
        wait_for("*/checkpoints/last.pt", runs, [proc], [err])
        proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
        proc.wait(timeout=WAIT)
    finally:
        stop([proc])
    stdout, stderr = out.read_text(), err.read_text()
    run = only_run(runs)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["signal"] == "SIGTERM", stderr
    assert stdout.count("SIGTERM received") + stderr.count("SIGTERM received") == 1  # rank 0 speaks alone
    assert stdout.count(f"mlp-torch train --resume {run}") == 1
    done = metrics["epochs"]
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == done >= 1 and len(metrics["history"]) == done

    # one process resumes it (the checkpoint knows nothing of processes) for one more epoch
    assert main(["train", "--resume", str(run), "--epochs", str(done + 1), "--no-progress"]) == 0
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
    alone = tmp_path / "alone"
    assert main(["train", *FLAGS, "--epochs", str(done + 1), "--runs-dir", str(alone)]) == 0
    assert_close(last_params(run), last_params(only_run(alone)), "resumed")


def test_a_process_that_hangs_or_dies_makes_the_others_stop_with_one_line(tmp_path):
    runs = tmp_path / "runs"
    args = ["-m", "mlp_torch", "train", *FLAGS, "--epochs", "100000", "--runs-dir", str(runs), "--dist-timeout", "3"]
    procs = launch(args, tmp_path)
    logs = [tmp_path / "rank0.err", tmp_path / "rank1.err"]
    try:
        wait_for("*/checkpoints/last.pt", runs, procs, logs)
        procs[1].send_signal(signal.SIGSTOP)  # rank 1 hangs: rank 0 waits --dist-timeout for it, then stops
        assert procs[0].wait(timeout=WAIT) == 1
        procs[1].send_signal(signal.SIGCONT)  # rank 1 goes on, finds rank 0 gone, and stops at once
        assert procs[1].wait(timeout=WAIT) == 1
    finally:
        stop(procs)
    for rank, log in enumerate(logs):
        text = log.read_text()
        assert "Traceback" not in text
        (line,) = [line for line in text.splitlines() if "error" in line]
        assert line.startswith(f"mlp-torch train: error: rank {rank} of 2 lost contact with the other processes")
        assert "--dist-timeout 3 s" in line
    assert "Timed out" in logs[0].read_text()  # the hang: gloo's timeout
    assert (tmp_path / "rank1.out").read_text() == ""  # rank 0 speaks for the run
    assert torch.load(only_run(runs) / "checkpoints" / "last.pt", weights_only=True)["epoch"] >= 1
