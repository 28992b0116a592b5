"""Data-parallel training: two processes train exactly as one, stop together, and say so when one is lost.

Two processes on the CPU with gloo, on 127.0.0.1, given the environment ``torchrun`` gives its
workers (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...). They are forked from this process, as
PyTorch's own distributed tests fork theirs: a fresh interpreter would spend seconds importing
torch (and ``torch._dynamo``, which the first optimizer imports) before a run of a fraction of a
second. ``torchrun`` itself only starts such processes and passes signals on to each. On a machine
with CUDA one test also runs two spawned processes on its GPU, gloo reducing CUDA tensors.

In float64 the only differences left between two processes and one are the order of a few
additions (each process sums its rows' gradients), so after two epochs their parameters agree to
~1e-15 relative, far inside the 1e-10 asked; a process that trained on the wrong rows, weighed a
shard wrongly or drew other augmentations would be off by far more than that.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from PIL import Image

from mlp_torch.cli import main
from mlp_torch.data import DataOptions
from mlp_torch.errors import UsageError
from mlp_torch.training import Callback, TrainConfig, TrainState, train
from mlp_torch.training.distributed import join_processes, process_device

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or not dist.is_available() or not dist.is_gloo_available(),
    reason="forks processes that meet with gloo on the loopback interface",
)

RELATIVE = 1e-10
WAIT = 120  # seconds for a process to end: only ever reached when something hangs

# 20 images per class, 2 held out: 54 training images, 6×6 px, flips and 2-pixel crops (the default)
SYNTHETIC = dict(dataset="synthetic", image_size=6, synthetic_train_per_class=20, synthetic_test_per_class=4)


@pytest.fixture(scope="module", autouse=True)
def imported_once(tmp_path_factory: pytest.TempPathFactory) -> None:
    """What a run imports on first use (torch._dynamo, TensorBoard), imported here once, for the forked processes.

    Else each would spend seconds on it, and rank 0 could keep the others waiting for longer than a
    short ``--dist-timeout``.
    """
    assert train(config(tmp_path_factory.mktemp("warm-up"), "custom", 64))["status"] == "completed"


def config(runs: Path, backend: str, batch_size: int, **data: Any) -> TrainConfig:
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


# --------------------------------------------------------------------------- processes as torchrun starts them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_rank(
    rank: int, world_size: int, port: int, logs: Path, one_gpu: bool, work: Callable[..., int], *args: Any
) -> None:
    """In the new process: torchrun's environment, the console into ``logs/rank{r}.{out,err}``, then ``work``.

    ``one_gpu``: every process is told ``LOCAL_RANK=0``, so that all of them take ``cuda:0``.
    """
    for fd, stream in ((1, "out"), (2, "err")):
        file = os.open(logs / f"rank{rank}.{stream}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(file, fd)
        os.close(file)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world_size),
        RANK=str(rank),
        LOCAL_RANK="0" if one_gpu else str(rank),
        OMP_NUM_THREADS="1",
        GLOO_SOCKET_IFNAME="lo",  # the loopback interface only
    )
    torch.set_num_threads(1)
    sys.exit(work(*args))


def launch(
    logs: Path, work: Callable[..., int], *args: Any, world_size: int = 2, one_gpu: bool = False
) -> list[multiprocessing.Process]:
    """``world_size`` processes running ``work(*args)``, as torchrun would start them on one machine.

    Forked, or with ``one_gpu`` spawned (a process forked after this one used CUDA cannot use it)
    and all on ``cuda:0``.
    """
    port, start = free_port(), multiprocessing.get_context("spawn" if one_gpu else "fork")
    procs = [
        start.Process(target=as_rank, args=(r, world_size, port, logs, one_gpu, work, *args)) for r in range(world_size)
    ]
    for proc in procs:
        proc.start()
    return procs


def finish(procs: list[multiprocessing.Process]) -> list[int | None]:
    """Wait for the processes to end (kill any left after ``WAIT``); their exit codes."""
    for proc in procs:
        proc.join(WAIT)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()
    return [proc.exitcode for proc in procs]


def wait_for(pattern: str, root: Path, procs: list[multiprocessing.Process], logs: Path) -> Path:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = list(root.glob(pattern))
        if found:
            return found[0]
        for rank, proc in enumerate(procs):
            assert proc.is_alive(), f"rank {rank} exited with {proc.exitcode}: {(logs / f'rank{rank}.err').read_text()}"
        time.sleep(0.05)
    raise AssertionError(f"nothing matched {pattern} after {WAIT} s")


def only_run(runs: Path) -> Path:
    (run,) = runs.iterdir()  # one run directory, however many processes trained it
    return run


def last_params(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model_state"]


def assert_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].dtype == expected[name].dtype == torch.float64
        relative = float((got[name] - expected[name]).abs().max() / expected[name].abs().max())
        assert relative <= RELATIVE, f"{what}: {name} differs by {relative:.3g} relative"


# --------------------------------------------------------------------------- N processes compute what one computes


def assert_trained_as_one(name: str, cfg: TrainConfig, ranks: list[dict[str, Any]], alone_root: Path) -> None:
    """The processes' run of ``cfg`` ends where one process alone, here, ends it with the same global
    batch and seed (≤ ``RELATIVE``), and every process (``ranks``: each one's record, on the CPU) holds
    those parameters bit for bit."""
    alone = TrainConfig.from_dict({**cfg.to_dict(), "runs_dir": str(alone_root / name)})
    assert train(alone)["status"] == "completed"
    got = last_params(only_run(cfg.runs_dir))
    assert_close(got, last_params(only_run(alone_root / name)), name)
    for rank in ranks:
        assert all(torch.equal(rank[name]["params"][k], got[k].cpu()) for k in got), name


class Record(Callback):
    """The rows of each of this process's batches, and the parameters it ended its last epoch with."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.params: dict[str, torch.Tensor] = {}

    def on_step_start(self, state: TrainState) -> None:
        assert state.batch is not None
        self.rows.append(len(state.batch[1]))

    def on_epoch_end(self, state: TrainState) -> None:
        self.params = {name: t.detach().clone() for name, t in state.model.state_dict().items()}


def train_cases(cases: dict[str, tuple[TrainConfig, str | Path | None]], out: Path) -> int:
    """One rank: each case as ``(config, resume)``, in one process group joined here (so ``train`` uses it).

    ``resume="stop"``: the run stops after its first epoch and these processes resume it; a path:
    they resume a run one process began. Writes ``out/rank{r}.pt``: per case, the rows of each of
    this process's batches and the parameters it ended with.
    """
    dist.init_process_group("gloo")
    records = {}
    for name, (cfg, resume) in cases.items():
        record = Record()
        if resume == "stop":
            stopped = train(cfg, stop_after_epochs=1, callbacks=[record])
            assert stopped["status"] == "interrupted", stopped["status"]
            resume = Path(stopped["run_dir"])
        metrics = train(cfg, resume=None if resume is None else Path(resume), callbacks=[record])
        assert metrics["status"] == "completed", metrics["status"]
        records[name] = {"rows": record.rows, "params": record.params}
    torch.save(records, out / f"rank{dist.get_rank()}.pt")
    dist.destroy_process_group()
    return 0


def test_two_processes_train_as_one_for_every_gradient_path(tmp_path):
    folder = imbalanced_folder(tmp_path / "images")
    weighted = dict(dataset="folder", data_root=folder, val_fraction=0.2, balance="weights")
    xor = dict(dataset="xor", samples=60, val_fraction=0.1)  # the image options do not apply
    begun_alone = config(tmp_path / "manual-resumed-by-2", "manual", 11)
    assert train(begun_alone, stop_after_epochs=1)["status"] == "interrupted"  # 1 process, then 2
    cases: dict[str, tuple[TrainConfig, str | Path | None]] = {  # batch sizes that cut 54 images unequally
        "builtin": (config(tmp_path / "builtin", "builtin", 13), None),  # 7 + 6 rows; the last batch 1 + 1
        "custom": (config(tmp_path / "custom", "custom", 53), None),  # 27 + 26; the last batch 1 + 0: an empty shard
        "manual": (config(tmp_path / "manual", "manual", 11), None),  # 6 + 5; the last batch 5 + 5
        # 10, 5 and 2 training images: class weights, so a shard weighs Σ w_y, not its row count
        "manual-weighted": (config(tmp_path / "manual-weighted", "manual", 7, **weighted), None),
        # stopped after its first epoch and resumed, by the same two processes
        "custom-resumed": (config(tmp_path / "custom-resumed", "custom", 13), "stop"),
        "manual-resumed-by-2": (begun_alone, only_run(begun_alone.runs_dir)),
        # ZCA-whitened images: whitened once, then flipped and cropped
        "builtin-whitened": (config(tmp_path / "builtin-whitened", "builtin", 13, whiten="zca"), None),
        # 2-D points and one sigmoid output unit, σ(p) and binary cross-entropy: 54 training points
        "custom-sigmoid-xor": (
            replace(config(tmp_path / "custom-sigmoid-xor", "custom", 13, **xor), output="sigmoid"),
            None,
        ),
    }
    assert finish(launch(tmp_path, train_cases, cases, tmp_path)) == [0, 0], (tmp_path / "rank0.err").read_text()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    for name, (cfg, _) in cases.items():
        assert_trained_as_one(name, cfg, ranks, tmp_path / "alone")  # each process having trained on its rows only
        rows = [ranks[0][name]["rows"], ranks[1][name]["rows"]]
        n = 17 if cfg.data.dataset == "folder" else 54
        batches = [min(cfg.batch_size, n - i) for i in range(0, n, cfg.batch_size)]
        epochs = 1 if name == "manual-resumed-by-2" else 2  # its first epoch was one process's
        assert [a + b for a, b in zip(*rows)] == batches * epochs, name
        assert all(0 <= a - b <= 1 for a, b in zip(*rows)), name  # rank 0 takes the odd row


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_two_processes_sharing_one_cuda_gpu_train_as_one(tmp_path):
    """The multi-process step on CUDA tensors: the same parameters as one process on the GPU, bit-equal ranks.

    ``torchrun`` gives each process a GPU of its own and nccl refuses two processes on one, but gloo
    reduces CUDA tensors too: in a group joined before ``train``, both processes on ``cuda:0``, a
    machine with a single GPU still runs ``all_reduce_step``'s device-side weights and copies.
    """
    folder = imbalanced_folder(tmp_path / "images")
    weighted = dict(dataset="folder", data_root=folder, val_fraction=0.2, balance="weights")
    cases: dict[str, tuple[TrainConfig, str | Path | None]] = {
        name: (replace(config(tmp_path / name, backend, batch_size, **data), device="cuda"), None)
        for name, backend, batch_size, data in (
            ("builtin", "builtin", 13, {}),
            ("custom", "custom", 53, {}),  # the last batch 1 + 0: an empty shard
            ("manual-weighted", "manual", 7, weighted),  # a shard weighs Σ w_y, on the GPU
        )
    }
    codes = finish(launch(tmp_path, train_cases, cases, tmp_path, one_gpu=True))
    assert codes == [0, 0], (tmp_path / "rank0.err").read_text()[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True, map_location="cpu") for r in range(2)]
    for name, (cfg, _) in cases.items():
        assert_trained_as_one(name, cfg, ranks, tmp_path / "alone")


# --------------------------------------------------------------------------- stopping, and losing a process

FLAGS = [  # a constant learning rate: the interrupted run's huge --epochs must not change the schedule
    *("train", "--dataset", "synthetic", "--image-size", "6", "--synthetic-train-per-class", "20"),
    *("--synthetic-test-per-class", "4", "--no-cache", "--hidden", "6", "--batch-size", "13"),
    *("--dtype", "float64", "--device", "cpu", "--no-progress", "--histogram-every", "0"),
    *("--schedule", "constant", "--warmup-epochs", "0"),
]


def test_sigterm_to_one_process_stops_both_after_the_same_step_with_one_last_pt_that_one_process_resumes(tmp_path):
    runs = tmp_path / "runs"
    procs = launch(tmp_path, main, [*FLAGS, "--epochs", "100000", "--runs-dir", str(runs)])
    try:
        wait_for("*/checkpoints/last.pt", runs, procs, tmp_path)
        # torchrun passes a signal on to every process, each gets it at its own moment; the
        # hardest case is the one where a single process gets it, and not the one that saves
        os.kill(procs[1].pid, signal.SIGTERM)
    finally:
        codes = finish(procs)
    assert codes == [143, 143], (tmp_path / "rank0.err").read_text() + (tmp_path / "rank1.err").read_text()
    run = only_run(runs)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["signal"] == "SIGTERM"
    out = [(tmp_path / f"rank{r}.out").read_text() + (tmp_path / f"rank{r}.err").read_text() for r in range(2)]
    assert out[0].count(f"mlp-torch train --resume {run}") == 1
    assert out[1] == ""  # rank 0 speaks for the run (rank 1's "SIGTERM received" goes nowhere)
    done = metrics["epochs"]
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == done >= 1 and len(metrics["history"]) == done

    # one process resumes it (the checkpoint knows nothing of processes) and ends one epoch later
    # where one process alone does: both processes stopped after the same step, and saved it
    assert main(["train", "--resume", str(run), "--epochs", str(done + 1), "--no-progress"]) == 0
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
    alone = tmp_path / "alone"
    assert main([*FLAGS, "--epochs", str(done + 1), "--runs-dir", str(alone)]) == 0
    assert_close(last_params(run), last_params(only_run(alone)), "resumed")


@pytest.mark.parametrize("fate", ["hangs", "dies"])
def test_a_process_that_hangs_or_dies_makes_the_others_stop_with_one_line(tmp_path, fate):
    runs = tmp_path / "runs"
    timeout = "3" if fate == "hangs" else "600"  # one that dies is noticed at once: its connections close
    procs = launch(tmp_path, main, [*FLAGS, "--epochs", "100000", "--runs-dir", str(runs), "--dist-timeout", timeout])
    try:
        wait_for("*/checkpoints/last.pt", runs, procs, tmp_path)
        os.kill(procs[1].pid, signal.SIGSTOP if fate == "hangs" else signal.SIGKILL)
        procs[0].join(WAIT)
        assert procs[0].exitcode == 1  # not a hang
        if fate == "hangs":
            os.kill(procs[1].pid, signal.SIGCONT)  # rank 1 goes on, finds rank 0 gone, and stops at once
    finally:
        codes = finish(procs)
    assert codes == [1, 1 if fate == "hangs" else -signal.SIGKILL]
    for rank in range(2 if fate == "hangs" else 1):
        text = (tmp_path / f"rank{rank}.err").read_text()
        assert "Traceback" not in text
        (line,) = [line for line in text.splitlines() if "error" in line]
        assert line.startswith(f"mlp-torch train: error: rank {rank} of 2 lost contact with the other processes")
        assert f"--dist-timeout {timeout} s" in line
    if fate == "hangs":
        assert "Timed out" in (tmp_path / "rank0.err").read_text()  # gloo's timeout, in rank 0's line
    assert (tmp_path / "rank1.out").read_text() == ""  # rank 0 speaks for the run
    assert torch.load(only_run(runs) / "checkpoints" / "last.pt", weights_only=True)["epoch"] >= 1


# --------------------------------------------------------------------------- launches that cannot work, and the GPUs


@pytest.mark.parametrize(
    ("rank", "says"),
    [
        ("0", "MASTER_ADDR expected, but not set; start the processes with torchrun"),
        ("3", "WORLD_SIZE=2 needs a RANK from 0 to 1; start the processes with torchrun"),
        ("one", "RANK='one' must be a whole number (torchrun sets it)"),
    ],
)
def test_a_launch_without_torchrun_s_variables_is_one_line_exit_2_and_makes_nothing(
    tmp_path, monkeypatch, capsys, rank, says
):
    for name in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    assert main([*FLAGS, "--runs-dir", str(tmp_path / "runs")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("mlp-torch train: error: ") and line.endswith(says)
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> list[torch.device]:
    """A machine with two CUDA GPUs, as far as device selection can tell; the devices set, in order."""
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


def test_under_torchrun_each_process_takes_the_gpu_of_its_local_rank(two_gpus, monkeypatch):
    assert process_device("auto", 1) == torch.device("cuda", 1) and two_gpus == [torch.device("cuda", 1)]
    assert process_device("cuda", 0) == torch.device("cuda", 0)
    assert process_device("cpu", 1) == torch.device("cpu")
    with pytest.raises(UsageError, match=r"LOCAL_RANK 2, but this machine has 2 GPU\(s\).*--nproc-per-node"):
        process_device("cuda", 2)
    with pytest.raises(UsageError, match="each process takes cuda:LOCAL_RANK; pass --device cuda"):
        process_device("cuda:1", 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(UsageError, match="no backend for MPS"):
        process_device("mps", 0)


@pytest.mark.parametrize(("device", "backend"), [("auto", "nccl"), ("cuda", "nccl"), ("cpu", "gloo")])
def test_the_backend_follows_the_device_nccl_on_the_gpu_of_the_local_rank(
    two_gpus, monkeypatch, capsys, device, backend
):
    """What the processes are joined with (never run with nccl here: no GPU); the group is faked."""
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(dist, "init_process_group", lambda name, **kw: calls.append((name, kw["device_id"])))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append(("destroyed", None)))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")  # the second process of the second machine
    monkeypatch.setenv("LOCAL_RANK", "1")
    with join_processes(device, timeout=5) as (world, chosen):
        assert (world.rank, world.size, world.timeout, world.is_main) == (3, 4, 5, False)
        print("rank 3 is quiet")
    assert capsys.readouterr().out == ""
    expected = torch.device("cuda", 1) if backend == "nccl" else torch.device("cpu")
    assert chosen == expected
    assert calls == [(backend, expected if backend == "nccl" else None), ("destroyed", None)]
