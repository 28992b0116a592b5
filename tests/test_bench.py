"""``bench``: every row and field of the documented JSON, on a tiny input size. Timings are never asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mlp_torch import cli
from mlp_torch.bench import (
    Spread,
    clock_for,
    gemm_calls,
    interleaved_medians,
    interleaved_times,
    keep_freed_memory,
    onednn_matmul,
    paired_ratios,
    saved_bytes,
)
from mlp_torch.models import BACKENDS, build_model

TINY = ["--quick", "--rounds", "1", "--image-size", "4", "--batch-size", "64", "--no-cache", "--device", "cpu"]
# (--batch-size is the old spelling of --batch-sizes, kept working)


def run_bench(tmp_path: Path, *flags: str) -> tuple[int, dict]:
    out = tmp_path / "bench.json"
    code = cli.main(["bench", *TINY, "--json", str(out), *flags])
    return code, json.loads(out.read_text())


def test_bench_writes_every_row_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = run_bench(tmp_path, "--rounds", "3")
    assert code == 0
    # the keys a reader of an earlier report knows are all still there; the spread is added beside them
    old_top = {"device", "torch", "threads", "load_average", "steps", "gemm_efficiency", "gemm_efficiency_by_backend"}
    assert old_top | {"data"} <= set(report)
    old_row = {"model", "backend", "batch", "ms", "ratio_vs_builtin", "saved_bytes", "compiled", "peak_bytes", "gflops"}
    assert all(old_row | {"ms_min", "ms_iqr", "ratio_iqr", "rounds"} <= set(row) for row in report["steps"])
    assert report["torch"] == torch.__version__ and report["device"].startswith("cpu")
    assert set(report["load_average"]) == {"before", "after"}
    assert report["batch_sizes"] == [64] and report["clock"] in ("thread-cpu-time", "wall")
    rows = {(r["model"], r["backend"]): r for r in report["steps"]}
    assert set(rows) == {(m, b) for m in ("softmax", "mlp") for b in BACKENDS}
    for row in report["steps"]:
        assert row["batch"] == 64 and row["compiled"] is False
        assert row["ms"] > 0 and row["ratio_vs_builtin"] > 0 and row["peak_bytes"] is None
        assert 0 < row["ms_min"] <= row["ms"] and row["ms_iqr"] >= 0 and row["ratio_iqr"] >= 0
        assert row["rounds"] == (3 if row["model"] == "mlp" else 60)
        assert isinstance(row["saved_bytes"], int) and row["saved_bytes"] > 0
        assert (row["gflops"] is None) == (row["model"] == "softmax")
    for model in ("softmax", "mlp"):
        assert rows[(model, "builtin")]["ratio_vs_builtin"] == 1.0
        assert rows[(model, "builtin")]["ratio_iqr"] == 0.0
    assert report["gemm_efficiency"] > 0
    assert set(report["gemm_efficiency_by_backend"]) == set(BACKENDS)
    assert report["gemm_efficiency_by_batch"] == {"64": report["gemm_efficiency_by_backend"]}
    data = report["data"]
    assert data["images"] > 0 and data["batch"] == 64
    assert data["device_batches_ms"] > 0 and data["dataloader_ms"] > 0 and data["speedup"] > 0
    assert "ToTensor" in data["dataloader_setup"]
    printed = capsys.readouterr().out
    assert "gemm efficiency at batch 64" in printed and "DataLoader" in printed
    assert "median of interleaved rounds" in printed and "IQR" in printed


def test_bench_rows_for_each_batch_size_and_the_data_path_at_the_largest(tmp_path: Path) -> None:
    code, report = run_bench(tmp_path, "--batch-sizes", "48", "16", "48")
    assert code == 0 and report["batch_sizes"] == [48, 16]
    batches = [(row["model"], row["backend"], row["batch"]) for row in report["steps"]]
    assert batches == [(m, b, n) for n in (48, 16) for m in ("softmax", "mlp") for b in BACKENDS]
    assert set(report["gemm_efficiency_by_batch"]) == {"48", "16"}
    assert report["data"]["batch"] == 48


@pytest.mark.slow
def test_bench_compile_adds_a_compiled_row_per_model_and_backend(tmp_path: Path) -> None:
    code, report = run_bench(tmp_path, "--compile")
    assert code == 0
    compiled = {(r["model"], r["backend"]) for r in report["steps"] if r["compiled"]}
    assert compiled == {(m, b) for m in ("softmax", "mlp") for b in BACKENDS}
    assert {"builtin+compile", "custom+compile", "manual+compile"} <= set(report["gemm_efficiency_by_backend"])


def test_saved_bytes_custom_and_manual_keep_no_more_than_builtin() -> None:
    """Bytes, unlike times, are deterministic: the hand-written paths keep at most what autograd keeps."""
    x, y = torch.randn(32, 48), torch.randint(0, 3, (32,))
    for kind, hidden in (("softmax", []), ("mlp", [16, 8])):
        kept = {b: saved_bytes(build_model(kind, 48, 3, hidden, "sigmoid", b, seed=0), x, y) for b in BACKENDS}
        activations = 4 * 32 * (48 + sum(hidden))  # x and each hidden output, float32
        assert activations <= kept["manual"] <= kept["custom"] <= kept["builtin"], kept


def test_gemm_reference_counts_the_step_flops() -> None:
    model = build_model("mlp", 48, 3, [16, 8], "sigmoid", "builtin", seed=0)
    _, flops = gemm_calls(model, 32, torch.device("cpu"))
    forward = 2 * 32 * (48 * 16 + 16 * 8 + 8 * 3)
    assert flops == 3 * forward - 2 * 32 * 48 * 16  # forward, dW, and dx for every layer but the first


@pytest.mark.skipif(onednn_matmul() is None, reason="this PyTorch has no oneDNN matmul op")
@pytest.mark.parametrize("shape", [(128, 3072, 512), (7, 5, 3), (1, 64, 1)])
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "transposed"])
def test_onednn_matmul_is_a_times_b_to_float32_rounding(shape: tuple[int, int, int], strided: bool) -> None:
    """The product the end-to-end bench times by oneDNN is ``a @ b``, as ``torch.mm``'s is, to float32 rounding."""
    m, k, n = shape
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    if strided:  # the step's dW = daᵀ x reads a transposed view
        a, b = torch.randn(k, m, generator=g).T, torch.randn(n, k, generator=g).T
    matmul = onednn_matmul()
    assert matmul is not None
    got = matmul(a, b)
    exact = a.double() @ b.double()
    bound = (a.double().abs() @ b.double().abs()) * k * torch.finfo(torch.float32).eps  # |Σ| rounding, k terms
    assert got.shape == (m, n) and got.dtype == torch.float32
    assert ((got.double() - exact).abs() <= bound).all()  # a transposed or misplaced operand is off by O(|a||b|)


def test_onednn_matmul_is_none_without_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert onednn_matmul() is None


@pytest.mark.parametrize("error", [RuntimeError("no such op"), TypeError("signature changed")])
def test_onednn_matmul_is_none_where_the_private_op_changed(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """A later PyTorch may rename ``torch.ops.mkldnn._linear_pointwise`` or change its arguments: no figure then."""

    def changed(*args: object) -> torch.Tensor:
        raise error

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", changed, raising=False)
    assert onednn_matmul() is None


def test_onednn_matmul_is_none_where_the_private_op_computes_something_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda x, w, *rest: x @ w, raising=False)  # W, not Wᵀ
    assert onednn_matmul() is None


def test_interleaved_medians_calls_every_variant_warmup_plus_rounds_times() -> None:
    calls = {"a": 0, "b": 0}

    def bump(name: str):
        return lambda: calls.__setitem__(name, calls[name] + 1)

    medians = interleaved_medians({"a": bump("a"), "b": bump("b")}, rounds=3, warmup=2, device=torch.device("cpu"))
    assert calls == {"a": 5, "b": 5} and set(medians) == {"a", "b"}


def test_spread_is_median_min_and_interquartile_range() -> None:
    spread = Spread.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (spread.median, spread.min, spread.iqr) == (3.0, 1.0, 2.0)  # quartiles 2 and 4
    assert Spread.of([7.0]) == Spread(7.0, 7.0, 0.0)


def test_ratios_are_taken_round_by_round() -> None:
    """A slow round slows every variant in it: the paired ratio stays, the ratio of medians need not."""
    times = {"builtin": [1.0, 10.0, 1.0], "custom": [1.1, 11.0, 1.1]}
    assert paired_ratios(times, "custom", "builtin") == pytest.approx([1.1, 1.1, 1.1])


def test_interleaved_times_rotate_the_order_each_round() -> None:
    order: list[str] = []
    fns = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = interleaved_times(fns, rounds=3, warmup=0, device=torch.device("cpu"))
    assert order == list("abcbcacab") and all(len(t) == 3 for t in times.values())


def test_one_thread_is_timed_by_cpu_time_more_threads_by_the_wall_clock() -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert clock_for(torch.device("cpu")) == "thread-cpu-time"
        torch.set_num_threads(2)
        assert clock_for(torch.device("cpu")) == "wall"
    finally:
        torch.set_num_threads(threads)
    assert clock_for(torch.device("cuda")) == "cuda-events"


def test_freed_memory_stays_mapped_where_glibc_allows() -> None:
    import platform

    described = keep_freed_memory()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert described is not None and "mallopt" in described
    else:
        assert described is None


@pytest.mark.parametrize(
    "flag", [["--rounds", "0"], ["--batch-size", "0"], ["--batch-sizes", "64", "0"], ["--workers", "-1"]]
)
def test_bad_flags_are_usage_errors(tmp_path: Path, flag: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--device", "cpu", *flag]) == 2
    assert "must be at least" in capsys.readouterr().err
