"""Benchmarks: the three gradient paths against each other and the GEMM limit, and our loader against a DataLoader.

Everything runs in one process. Variants are interleaved (one call of each, in a rotating order,
per round) so that a noisy neighbour slows them all alike, and each result is the median over the
rounds after warm-up. On CUDA each call is timed with CUDA events and synchronised; on the CPU with
``time.perf_counter``.

What a step is: ``zero_grad(set_to_none=True)``, ``model.compute_gradients(x, y)`` (forward,
loss, backward) and ``torch.optim.SGD(foreach=True).step()``, identical for every backend.

``saved_bytes`` is what a step keeps alive for its backward pass, parameters excluded (they live
anyway): for ``builtin``/``custom`` the distinct storages that autograd packs (counted with
``torch.autograd.graph.saved_tensors_hooks``), for ``manual`` the cache its forward returns.

(Compiled rows report the eager count: what a compiled graph keeps is up to the compiler.)

``gemm_efficiency`` is the FLOP rate of the MLP step divided by that of bare ``torch.mm`` calls on the
step's own GEMM shapes (forward ``x Wᵀ``, ``daᵀ h`` and ``da W`` per layer), timed in the same rounds:
1.0 would mean the step costs nothing beyond its matrix products.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .data import DataBundle, DeviceBatches, Standardizer
from .models import BACKENDS, build_model
from .models.base import Classifier

MODELS: tuple[tuple[str, tuple[int, ...]], ...] = (("softmax", ()), ("mlp", (512, 512)))


@dataclass
class BenchSettings:
    """How long to measure. ``quick`` keeps every row with fewer rounds."""

    batch: int = 512
    warmup: int = 3
    rounds: dict[str, int] = field(default_factory=lambda: {"softmax": 200, "mlp": 30})
    data_rounds: int = 5
    compile: bool = False

    @classmethod
    def quick(cls, compile: bool = False) -> BenchSettings:
        return cls(warmup=1, rounds={"softmax": 20, "mlp": 5}, data_rounds=1, compile=compile)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds one call of ``fn`` takes, all its device work included."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start_s = time.perf_counter()
    fn()
    if device.type == "mps":
        torch.mps.synchronize()
    return (time.perf_counter() - start_s) * 1e3


def interleaved_medians(
    fns: dict[str, Callable[[], Any]], rounds: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Median milliseconds per variant; each round calls every variant once, starting one further along."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            times[name].append(time_call(fns[name], device))
    return {name: statistics.median(t) for name, t in times.items()}


# --------------------------------------------------------------------------------------------
# Training steps
# --------------------------------------------------------------------------------------------


def make_step(model: Classifier, x: torch.Tensor, y: torch.Tensor, compile: bool = False) -> Callable[[], None]:
    """One SGD training step of ``model`` on ``(x, y)`` with its own backend."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, foreach=True)
    gradients = model.compute_gradients
    if compile:
        gradients = torch.compile(gradients)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        gradients(x, y)
        optimizer.step()

    return step


def saved_bytes(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes kept for backward by one forward pass, parameters excluded (see the module docstring)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    if model.backend == "manual":
        with torch.no_grad():
            _, cache = model._manual_forward(x)
        kept = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in _tensors_in(cache)}
    else:
        kept = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            kept[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.loss(x, y)
    return sum(nbytes for ptr, nbytes in kept.items() if ptr not in params)


def _tensors_in(cache: object) -> list[torch.Tensor]:
    """Every tensor in a manual path's cache (a tensor, or nested tuples and lists of them)."""
    if isinstance(cache, torch.Tensor):
        return [cache]
    if isinstance(cache, (list, tuple)):
        return [t for item in cache for t in _tensors_in(item)]
    return []


def peak_bytes(step: Callable[[], None], device: torch.device) -> int | None:
    """Peak CUDA memory one step allocates above what was already allocated; ``None`` off CUDA."""
    if device.type != "cuda":
        return None
    step()  # a first call compiles (with --compile) and allocates the optimizer's buffers
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def gemm_calls(model: Classifier, batch: int, device: torch.device) -> tuple[Callable[[], None], float]:
    """Bare ``torch.mm`` calls on the GEMM shapes of one training step, and their FLOPs."""
    generator = torch.Generator(device).manual_seed(0)
    shapes = []  # (rows, inner, cols) of each product
    for i, layer in enumerate(model.layers):
        out, inp = layer.weight.shape
        shapes.append((batch, inp, out))  # a = h Wᵀ: (N,I) @ (I,O)
        shapes.append((out, batch, inp))  # dW = daᵀ h: (O,N) @ (N,I)
        if i > 0:
            shapes.append((batch, out, inp))  # dh = da W: (N,O) @ (O,I)
    operands = [
        (torch.randn(m, k, device=device, generator=generator), torch.randn(k, n, device=device, generator=generator))
        for m, k, n in shapes
    ]
    flops = sum(2.0 * m * k * n for m, k, n in shapes)

    def run() -> None:
        for a, b in operands:
            torch.mm(a, b)

    return run, flops


@dataclass
class StepRow:
    model: str
    backend: str
    batch: int
    ms: float
    ratio_vs_builtin: float
    saved_bytes: int
    compiled: bool = False
    peak_bytes: int | None = None
    gflops: float | None = None


def bench_steps(
    in_features: int, num_classes: int, device: torch.device, settings: BenchSettings, seed: int = 0
) -> tuple[list[StepRow], dict[str, float]]:
    """Time every (model, backend[, compiled]) step; return the rows and the MLP's GEMM efficiency per variant."""
    generator = torch.Generator(device).manual_seed(seed)
    x = torch.randn(settings.batch, in_features, device=device, generator=generator)
    y = torch.randint(0, num_classes, (settings.batch,), device=device, generator=generator)
    compiled_modes = (False, True) if settings.compile else (False,)
    rows: list[StepRow] = []
    efficiency: dict[str, float] = {}
    for kind, hidden in MODELS:
        fns: dict[str, Callable[[], None]] = {}
        info: dict[str, tuple[str, bool, int, int | None]] = {}
        for compiled in compiled_modes:
            for backend in BACKENDS:
                model = build_model(kind, in_features, num_classes, hidden, "sigmoid", backend, seed=seed).to(device)
                name = f"{backend}{'+compile' if compiled else ''}"
                fns[name] = make_step(model, x, y, compile=compiled)
                info[name] = (backend, compiled, saved_bytes(model, x, y), peak_bytes(fns[name], device))
        flops = 0.0
        if kind == "mlp":
            fns["torch.mm"], flops = gemm_calls(model, settings.batch, device)
        medians = interleaved_medians(fns, settings.rounds[kind], settings.warmup, device)
        for name, (backend, compiled, kept, peak) in info.items():
            reference = medians["builtin+compile" if compiled else "builtin"]
            row = StepRow(kind, backend, settings.batch, medians[name], medians[name] / reference, kept, compiled, peak)
            if flops:
                row.gflops = flops / medians[name] / 1e6
                efficiency[name] = medians["torch.mm"] / medians[name]  # same FLOPs: the rate ratio is the time ratio
            rows.append(row)
    return rows, efficiency


# --------------------------------------------------------------------------------------------
# Data path
# --------------------------------------------------------------------------------------------


class _UInt8ImageDataset(torch.utils.data.Dataset):
    """The usual torchvision recipe over our images: a PIL image per item, then the transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable[[Any], torch.Tensor]) -> None:
        self.x = x.permute(0, 2, 3, 1).contiguous().numpy()  # N,H,W,3 as PIL wants it
        self.y = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), self.y[i]


def bench_data(bundle: DataBundle, device: torch.device, batch: int, rounds: int, workers: int = 0) -> dict[str, Any]:
    """One epoch of standardised float batches on ``device``: DeviceBatches vs DataLoader, median ms."""
    from torchvision import transforms

    train = bundle.train
    standardizer = Standardizer.fit(train.x)
    on_device = train.to(device)
    batches = DeviceBatches(
        on_device.x, on_device.y, batch, standardizer, generator=torch.Generator(device).manual_seed(0)
    )
    scale = train.x.to(torch.float32) / 255.0  # ToTensor's range, for the per-channel statistics
    mean, std = scale.mean(dim=(0, 2, 3)).tolist(), scale.std(dim=(0, 2, 3)).tolist()
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader(
        _UInt8ImageDataset(train.x, train.y, transform),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )

    def ours() -> None:
        for _ in batches:
            pass

    def dataloader() -> None:
        for xb, yb in loader:
            xb = xb.to(device, non_blocking=True).flatten(1)
            yb = yb.to(device, non_blocking=True)

    medians = interleaved_medians({"device_batches": ours, "dataloader": dataloader}, rounds, 1, device)
    return {
        "source": bundle.source,
        "images": len(train),
        "batch": batch,
        "device_batches_ms": medians["device_batches"],
        "dataloader_ms": medians["dataloader"],
        "speedup": medians["dataloader"] / medians["device_batches"],
        "dataloader_setup": (
            f"torchvision ToTensor + Normalize(per-channel mean/std) on PIL images made from the "
            f"same uint8 tensor (already decoded), num_workers={workers}, shuffle, then "
            f".to({device.type}) and flatten"
        ),
        "device_batches_setup": "DeviceBatches: uint8 split on the device, permutation, gather, per-pixel standardise",
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    return f"cpu: {name}, {threads} thread{'s' if threads != 1 else ''}"


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (other processes' work skews CPU timings); ``None`` where unknown."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def run_benchmark(
    bundle: DataBundle, device: torch.device, settings: BenchSettings, workers: int = 0, seed: int = 0
) -> dict[str, Any]:
    """The whole benchmark as the JSON-able dict that ``mlp-torch bench --json`` writes."""
    load_before = load_average()
    rows, efficiency = bench_steps(bundle.in_features, bundle.num_classes, device, settings, seed)
    data = bench_data(bundle, device, settings.batch, settings.data_rounds, workers)
    return {
        "device": describe_device(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": {"before": load_before, "after": load_average()},
        "steps": [vars(row) for row in rows],
        "gemm_efficiency": efficiency["builtin"],
        "gemm_efficiency_by_backend": efficiency,
        "data": data,
    }


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table of :func:`run_benchmark`'s result."""
    lines = [f"device: {report['device']}; torch {report['torch']}"]
    load = report["load_average"]
    if load["before"] is not None:
        lines.append(f"load average (1/5/15 min) before {load['before']}, after {load['after']}")
        busy, cores, threads = load["before"][0], os.cpu_count() or 1, report["threads"]
        if report["device"].startswith("cpu") and threads > 1 and busy + threads > cores + 0.5:
            lines.append(
                f"warning: load average {busy:.1f} on {cores} cores; with {threads} threads each parallel "
                f"op waits for a core (try --threads 1, or a quiet machine)"
            )
    lines.append("")
    header = (
        f"{'model':<8} {'backend':<16} {'batch':>5} {'ms/step':>9} {'vs builtin':>10} {'saved MiB':>9} "
        f"{'peak MiB':>8} {'GFLOP/s':>8}"
    )
    lines += [header, "-" * len(header)]
    for row in report["steps"]:
        backend = row["backend"] + ("+compile" if row["compiled"] else "")
        peak = "-" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2**20:.1f}"
        gflops = "-" if row["gflops"] is None else f"{row['gflops']:.1f}"
        lines.append(
            f"{row['model']:<8} {backend:<16} {row['batch']:>5} {row['ms']:>9.3f} "
            f"{row['ratio_vs_builtin']:>10.3f} {row['saved_bytes'] / 2**20:>9.3f} {peak:>8} {gflops:>8}"
        )
    by_backend = ", ".join(f"{name} {value:.2f}" for name, value in report["gemm_efficiency_by_backend"].items())
    lines += ["", f"gemm efficiency (mlp step FLOP rate / torch.mm on its GEMM shapes): {by_backend}"]
    d = report["data"]
    lines += [
        f"data, one epoch of {d['images']} images in batches of {d['batch']} ({d['source']}):",
        f"  DeviceBatches {d['device_batches_ms']:.1f} ms, DataLoader {d['dataloader_ms']:.1f} ms: "
        f"{d['speedup']:.1f}x faster",
        f"  DataLoader = {d['dataloader_setup']}",
    ]
    return "\n".join(lines)
