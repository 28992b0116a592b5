"""``bench --end-to-end``, the plain-PyTorch baseline script and ``scripts/gpu_check.sh``.

Tiny synthetic images, one epoch: the JSON's fields and how they relate, never the timings.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mlp_torch import cli
from mlp_torch.bench import gemm_calls, onednn_matmul
from mlp_torch.data import DataOptions
from mlp_torch.errors import MlpTorchError, UsageError
from mlp_torch.models import build_model
from mlp_torch.training import bench_end_to_end
from mlp_torch.training.bench_end_to_end import GemmRate, forward_flops, onednn_line

REPO = Path(__file__).resolve().parents[1]
KEYS = {
    "epoch_seconds",
    "gemm_limit_epoch_seconds",
    "gemm_fraction",
    "plain_pytorch_epoch_seconds",
    "vs_plain_pytorch",
    "accuracy",
    "plain_pytorch_accuracy",
}


def load_baseline():
    spec = importlib.util.spec_from_file_location(
        "plain_pytorch_baseline", REPO / "scripts" / "plain_pytorch_baseline.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_end_to_end_writes_the_documented_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_end_to_end, "SHARED_JPEGS", ())  # synthetic images even beside the real ones
    out = tmp_path / "e.json"
    flags = ["--epochs", "1", "--workers", "0", "--image-size", "8", "--device", "cpu", "--data-root", str(tmp_path)]
    tiny = ["--synthetic-train-per-class", "40", "--synthetic-test-per-class", "10"]
    assert cli.main(["bench", "--end-to-end", "--quick", *flags, *tiny, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    e = report["end_to_end"]
    assert KEYS <= set(e)
    assert report["images"] == "synthetic PNG images" and report["device"] == "cpu"
    assert set(report["load_average"]) == {"before", "after"}
    assert e["epochs"] == 1 and len(e["epoch_seconds_each"]) == 1 == len(e["plain_pytorch_epoch_seconds_each"])
    assert e["train_images"] + e["val_images"] == 80 and e["plain_pytorch_workers"] == 0
    assert e["gemm_fraction"] == pytest.approx(e["gemm_limit_epoch_seconds"] / e["epoch_seconds"])
    assert e["vs_plain_pytorch"] == pytest.approx(e["epoch_seconds"] / e["plain_pytorch_epoch_seconds"])
    assert e["epoch_seconds_min"] == e["epoch_seconds_mean"] == e["epoch_seconds"] and e["epoch_seconds_iqr"] == 0
    assert e["plain_pytorch_epoch_seconds_min"] == e["plain_pytorch_epoch_seconds"]
    assert all(e[k] > 0 for k in ("epoch_seconds", "gemm_limit_epoch_seconds", "plain_pytorch_epoch_seconds"))
    assert 0 <= e["accuracy"] <= 1 and 0 <= e["plain_pytorch_accuracy"] <= 1
    out = capsys.readouterr().out
    assert "vs_plain_pytorch" in out
    # the same GEMMs by oneDNN, on the CPU where this PyTorch has it: the limit at that rate
    if onednn_matmul() is None:
        assert e["onednn_gflops_per_second"] is None is e["onednn_gemm_limit_epoch_seconds"]
        assert "oneDNN" not in out
    else:
        onednn_limit = e["gemm_limit_epoch_seconds"] * e["gemm_gflops_per_second"] / e["onednn_gflops_per_second"]
        assert e["onednn_gemm_limit_epoch_seconds"] == pytest.approx(onednn_limit)
        assert "the GEMMs by oneDNN" in out


@pytest.mark.parametrize(
    ("onednn", "said"),
    [(None, None), (200.0, ""), (480.0, ": MKL holds this CPU back (README, Performance)")],
)
def test_the_report_says_when_onednn_outruns_torch_mm(onednn, said):
    e = {"gemm_gflops_per_second": 200.0, "onednn_gflops_per_second": onednn, "onednn_gemm_limit_epoch_seconds": 0.1}
    lines = onednn_line(e)
    if said is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].endswith(f"x torch.mm{said})")
        assert f"{onednn / 200:.1f}x" in lines[0]


def test_the_gemm_rate_brackets_the_epochs_it_is_compared_with(tmp_path, monkeypatch):
    """Timed just before the first epoch's clock starts and once the run has ended, never in between."""
    events: list[str] = []
    real_rate, real_end = GemmRate.measure, bench_end_to_end.EpochTimer.on_epoch_end

    def rate(self, device):
        events.append("rate")
        return real_rate(self, device)

    def epoch_end(self, state):
        events.append("epoch")
        real_end(self, state)

    monkeypatch.setattr(GemmRate, "measure", rate)
    monkeypatch.setattr(bench_end_to_end.EpochTimer, "on_epoch_end", epoch_end)
    data = DataOptions(
        dataset="synthetic", synthetic_train_per_class=20, synthetic_test_per_class=5, image_size=4, cache=False
    )
    settings = bench_end_to_end.EndToEndSettings(epochs=2, gemm_rounds=3)
    seconds, _, state, gemm_rate = bench_end_to_end.train_ours(tmp_path, data, settings, "cpu", seed=0)
    assert events == ["rate", "epoch", "epoch", "rate"] and len(seconds) == 2
    assert len(gemm_rate.rates) == 6 and all(r > 0 for r in gemm_rate.rates)
    assert len(gemm_rate.onednn_rates) == (0 if onednn_matmul() is None else 6)  # timed beside, at the same moments
    assert all(r > 0 for r in gemm_rate.onednn_rates)
    sizes = [48, *state.config.hidden, 3]  # the run's own layers: forward, dW, and dx above the first
    forward = sum(2 * n_in * n_out for n_in, n_out in zip(sizes, sizes[1:]))
    assert gemm_rate.forward_flops_per_image == forward
    assert gemm_rate.train_flops_per_image == 3 * forward - 2 * sizes[0] * sizes[1]


def test_end_to_end_refuses_zero_epochs(capsys):
    assert cli.main(["bench", "--end-to-end", "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert "--epochs must be at least 1" in err and err.count("\n") == 1


@pytest.mark.parametrize("sizes", [[3072, 512, 2], [48, 16, 8, 3]])
def test_gemm_flops_are_those_a_training_step_runs(sizes):
    """The limit's FLOP count against PyTorch's own count of one builtin step's matrix products."""
    batch = 16
    model = build_model("mlp", in_features=sizes[0], num_classes=sizes[-1], hidden=sizes[1:-1], backend="builtin")
    x, y = torch.randn(batch, sizes[0]), torch.randint(0, sizes[-1], (batch,))
    with FlopCounterMode(display=False) as counter:
        model.compute_gradients(x, y)
    _, flops = gemm_calls(model, batch, torch.device("cpu"))
    assert flops == counter.get_total_flops()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert forward_flops(model) * batch == counter.get_total_flops()


def test_baseline_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    baseline = load_baseline()
    (tmp_path / "train" / "cat").mkdir(parents=True)
    cases = {
        (): "--data-root",
        ("--data-root", str(tmp_path)): "is not a folder",
        ("--data-root", str(tmp_path), "--epochs", "0"): "--epochs must be at least 1",
        ("--data-root", str(tmp_path), "--val-fraction", "1"): "--val-fraction must be in [0, 1)",
        ("--data-root", str(tmp_path), "--workers", "-1"): "--workers counts must be at least 0",
    }
    for argv, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            baseline.parse_args(list(argv))
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_baseline_reads_its_settings(tmp_path):
    baseline = load_baseline()
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
    args = baseline.parse_args(["--data-root", str(tmp_path), "--epochs", "2", "--workers", "0", "2"])
    assert args.epochs == 2 and args.workers == [0, 2] and args.classes == "cat,dog" and args.batch_size == 128
    factor = baseline.warmup_cosine(epochs=2, steps_per_epoch=4)
    assert [factor(t) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]  # one epoch of warm-up, as train's default
    assert factor(4) == 1.0 and factor(7) == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 3 / 4)).item()))


def test_gpu_check_is_valid_bash_and_refuses_without_cuda(tmp_path):
    script = REPO / "scripts" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: gpu_check.sh would run for minutes")
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(script), str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "needs a CUDA GPU" in done.stderr and done.stderr.count("\n") == 1
    usage = subprocess.run(["bash", str(script)], cwd=REPO, env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: scripts/gpu_check.sh DIR" in usage.stderr


def test_a_failing_baseline_is_one_error_line_with_its_reason(tmp_path, monkeypatch):
    script = tmp_path / "baseline.py"
    script.write_text("import sys\nprint('working', file=sys.stderr)\nsys.exit('torchvision is not installed')\n")
    monkeypatch.setattr(bench_end_to_end, "BASELINE_SCRIPT", script)
    settings = bench_end_to_end.EndToEndSettings.quick()
    with pytest.raises(MlpTorchError, match=r"baseline failed \(exit 1\): torchvision is not installed$"):
        bench_end_to_end.run_baseline(tmp_path, settings, torch.device("cpu"), seed=0, threads=1)
    monkeypatch.setattr(bench_end_to_end, "BASELINE_SCRIPT", tmp_path / "missing.py")
    with pytest.raises(UsageError, match="run the bench from a checkout"):
        bench_end_to_end.run_baseline(tmp_path, settings, torch.device("cpu"), seed=0, threads=1)


def test_gpu_check_steps_fit_in_eight_minutes():
    """Every step's own time limit, summed (the per-backend step runs once per backend), leaves room in 8 minutes."""
    total = 0
    for line in (REPO / "scripts" / "gpu_check.sh").read_text().splitlines():
        words = line.split()
        if len(words) > 2 and words[0] == "step" and words[2].isdigit():
            total += int(words[2]) * (3 if "backend" in words[1] else 1)  # "train_$backend", "train_${backend}_..."
    assert 300 < total <= 8 * 60 - 20, f"the steps' limits add up to {total} s"
