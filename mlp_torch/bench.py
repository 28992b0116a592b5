"""Benchmarks: the three gradient paths against each other and the GEMM limit, and our loader against a DataLoader.

Everything runs in one process. Variants are interleaved (one call of each, in a rotating order,
per round) so that a noisy neighbour slows them all alike. Each row reports the median over the
rounds after warm-up with its spread (the fastest round and the interquartile range), and its ratio
to ``builtin`` as the median of the per-round ratios: a round's calls run back to back, so a load
that comes and goes cancels in their ratio. On CUDA each call is timed with CUDA events and
synchronised; on the CPU with one thread by the CPU time of the calling thread
(``time.thread_time``), which leaves out the time the thread waits for a core while another process
runs; with more threads by the wall clock (``time.perf_counter``), since the other threads' work is
not the caller's CPU time.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .data import DataBundle, DeviceBatches, Standardizer
from .models import BACKENDS, build_model
from .models.base import Classifier

MODELS: tuple[tuple[str, tuple[int, ...]], ...] = (("softmax", ()), ("mlp", (512, 512)))
BATCH_SIZES: tuple[int, ...] = (128, 512)


@dataclass
class BenchSettings:
    """How long to measure. ``quick`` keeps every row with fewer rounds."""

    batch_sizes: tuple[int, ...] = BATCH_SIZES
    warmup: int = 3
    rounds: dict[str, int] = field(default_factory=lambda: {"softmax": 2000, "mlp": 100})
    data_rounds: int = 5
    compile: bool = False

    @classmethod
    def quick(cls, compile: bool = False) -> BenchSettings:
        return cls(warmup=2, rounds={"softmax": 800, "mlp": 40}, data_rounds=1, compile=compile)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def clock_for(device: torch.device) -> str:
    """``cuda-events`` on CUDA; on the CPU ``thread-cpu-time`` with one thread, else ``wall``."""
    if device.type == "cuda":
        return "cuda-events"
    return "thread-cpu-time" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"


def time_call(fn: Callable[[], Any], device: torch.device, clock: str | None = None) -> float:
    """Milliseconds one call of ``fn`` takes, all its device work included, by ``clock`` (see :func:`clock_for`)."""
    clock = clock or clock_for(device)
    if clock == "cuda-events":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    now = time.thread_time if clock == "thread-cpu-time" else time.perf_counter
    start_s = now()
    fn()
    if device.type == "mps":
        torch.mps.synchronize()
    return (now() - start_s) * 1e3


@dataclass(frozen=True)
class Spread:
    """The median of some timings, their minimum and their interquartile range."""

    median: float
    min: float
    iqr: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if len(values) < 2:
            return cls(values[0], values[0], 0.0)
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(statistics.median(values), min(values), q3 - q1)


def interleaved_times(
    fns: dict[str, Callable[[], Any]], rounds: int, warmup: int, device: torch.device, clock: str | None = None
) -> dict[str, list[float]]:
    """Milliseconds of each call, per variant; each round calls every variant once, starting one further along."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            times[name].append(time_call(fns[name], device, clock))
    return times


def interleaved_medians(
    fns: dict[str, Callable[[], Any]], rounds: int, warmup: int, device: torch.device, clock: str | None = None
) -> dict[str, float]:
    """Median milliseconds per variant of :func:`interleaved_times`."""
    times = interleaved_times(fns, rounds, warmup, device, clock)
    return {name: statistics.median(t) for name, t in times.items()}


def keep_freed_memory() -> str | None:
    """Ask glibc to keep freed memory in the process (``mallopt``); what was set, or ``None`` elsewhere.

    A step frees its gradients (``zero_grad(set_to_none=True)``) and allocates them again: 6 MiB
    for the MLP's first layer. Once more than the trim threshold lies free at the top of its heap,
    glibc hands the pages back to the kernel, and the next allocation of that size faults them in
    again (about 1,500 page faults, 3 ms at batch 128). Which variant pays depends on the order in
    which the interleaved variants free and allocate, not on the variant: with the thresholds
    raised, no step page-faults and the rows compare the steps themselves.
    """
    import ctypes
    import ctypes.util

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    if not (libc.mallopt(m_trim_threshold, 1 << 30) and libc.mallopt(m_mmap_threshold, 32 << 20)):
        return None
    return "glibc mallopt: trim threshold 1 GiB, mmap threshold 32 MiB (freed memory stays mapped)"


def paired_ratios(times: dict[str, list[float]], name: str, reference: str) -> list[float]:
    """``name``'s time over ``reference``'s, round by round (both ran in each round, back to back)."""
    return [t / ref for t, ref in zip(times[name], times[reference])]


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


def gemm_calls(
    model: Classifier, batch: int, device: torch.device, matmul: Callable[[torch.Tensor, torch.Tensor], Any] = torch.mm
) -> tuple[Callable[[], None], float]:
    """``matmul`` calls (``torch.mm`` or :func:`onednn_matmul`'s) on one training step's GEMM shapes; their FLOPs."""
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
            matmul(a, b)

    return run, flops


def onednn_matmul() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """``a @ b`` by oneDNN's matmul on the CPU (float32), or ``None`` where this PyTorch has no such op.

    ``torch.mm`` on the CPU is MKL's sgemm, and MKL runs its AVX2 kernels on x86 processors that
    are not Intel's, whatever vector units they have; oneDNN, which PyTorch also ships (its compiler
    calls it), chooses kernels by the instruction sets it finds: AVX-512 on AMD's Zen 4 and 5 (see
    README, "Performance"). ``bench --end-to-end`` times it on the same shapes beside ``torch.mm``,
    so that a GEMM limit at MKL's rate is not taken for the machine's. It is PyTorch's private op
    ``torch.ops.mkldnn._linear_pointwise`` (``X Wᵀ + b``): measured here, never trained with; a
    release without it, or with another signature, gives ``None``.
    """
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        linear = torch.ops.mkldnn._linear_pointwise

        def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return linear(a, b.T, None, "none", [], "")  # a (bᵀ)ᵀ = a b

        works = torch.equal(matmul(torch.ones(2, 3), torch.full((3, 4), 2.0)), torch.full((2, 4), 6.0))
    except (AttributeError, RuntimeError, TypeError):
        return None
    return matmul if works else None


@dataclass
class StepRow:
    """One (model, backend, batch) row: the median step time with its spread, and its ratio to builtin."""

    model: str
    backend: str
    batch: int
    ms: float
    ratio_vs_builtin: float
    saved_bytes: int
    compiled: bool = False
    peak_bytes: int | None = None
    gflops: float | None = None
    ms_min: float = 0.0
    ms_iqr: float = 0.0
    ratio_iqr: float = 0.0
    rounds: int = 0


def bench_steps(
    in_features: int, num_classes: int, device: torch.device, settings: BenchSettings, seed: int = 0
) -> tuple[list[StepRow], dict[int, dict[str, float]]]:
    """Time every (model, backend[, compiled]) step at each batch size.

    Returns the rows and, per batch size, the MLP's GEMM efficiency per variant.
    """
    clock = clock_for(device)
    compiled_modes = (False, True) if settings.compile else (False,)
    rows: list[StepRow] = []
    efficiency: dict[int, dict[str, float]] = {}
    for batch in settings.batch_sizes:
        generator = torch.Generator(device).manual_seed(seed)
        x = torch.randn(batch, in_features, device=device, generator=generator)
        y = torch.randint(0, num_classes, (batch,), device=device, generator=generator)
        for kind, hidden in MODELS:
            fns: dict[str, Callable[[], None]] = {}
            info: dict[str, tuple[str, bool, int, int | None]] = {}
            for compiled in compiled_modes:
                for backend in BACKENDS:
                    model = build_model(kind, in_features, num_classes, hidden, "sigmoid", backend, seed=seed)
                    model = model.to(device)
                    name = f"{backend}{'+compile' if compiled else ''}"
                    fns[name] = make_step(model, x, y, compile=compiled)
                    info[name] = (backend, compiled, saved_bytes(model, x, y), peak_bytes(fns[name], device))
            flops = 0.0
            if kind == "mlp":
                fns["torch.mm"], flops = gemm_calls(model, batch, device)
            rounds = settings.rounds[kind]
            times = interleaved_times(fns, rounds, settings.warmup, device, clock)
            for name, (backend, compiled, kept, peak) in info.items():
                spread = Spread.of(times[name])
                ratios = Spread.of(paired_ratios(times, name, "builtin+compile" if compiled else "builtin"))
                row = StepRow(
                    kind, backend, batch, spread.median, ratios.median, kept, compiled, peak,
                    ms_min=spread.min, ms_iqr=spread.iqr, ratio_iqr=ratios.iqr, rounds=rounds,
                )  # fmt: skip
                if flops:
                    row.gflops = flops / spread.median / 1e6
                    # same FLOPs: the rate ratio is the time ratio, taken round by round
                    efficiency.setdefault(batch, {})[name] = 1 / statistics.median(
                        paired_ratios(times, name, "torch.mm")
                    )
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

    # the wall clock: DataLoader workers are other processes, whose time is no thread's of ours
    clock = "cuda-events" if device.type == "cuda" else "wall"
    medians = interleaved_medians({"device_batches": ours, "dataloader": dataloader}, rounds, 1, device, clock)
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
    allocator = keep_freed_memory()
    load_before = load_average()
    rows, efficiency = bench_steps(bundle.in_features, bundle.num_classes, device, settings, seed)
    largest = max(settings.batch_sizes)
    data = bench_data(bundle, device, largest, settings.data_rounds, workers)
    return {
        "device": describe_device(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "clock": clock_for(device),
        "batch_sizes": list(settings.batch_sizes),
        "load_average": {"before": load_before, "after": load_average()},
        "allocator": allocator,
        "steps": [vars(row) for row in rows],
        "gemm_efficiency": efficiency[largest]["builtin"],
        "gemm_efficiency_by_backend": efficiency[largest],
        "gemm_efficiency_by_batch": {str(batch): value for batch, value in efficiency.items()},
        "data": data,
    }


CLOCKS = {
    "cuda-events": "CUDA events",
    "thread-cpu-time": "CPU time of the calling thread",
    "wall": "wall clock",
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
    if report["allocator"]:
        lines.append(f"allocator: {report['allocator']}")
    lines.append(
        f"times: {CLOCKS[report['clock']]}, median of interleaved rounds (min and interquartile range beside it); "
        "vs builtin: median of the per-round ratios, and their IQR"
    )
    lines.append("")
    header = (
        f"{'model':<8} {'backend':<16} {'batch':>5} {'ms/step':>9} {'min':>9} {'IQR':>8} {'vs builtin':>10} {'IQR':>6} "
        f"{'saved MiB':>9} {'peak MiB':>8} {'GFLOP/s':>8}"
    )
    lines += [header, "-" * len(header)]
    for row in report["steps"]:
        backend = row["backend"] + ("+compile" if row["compiled"] else "")
        peak = "-" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2**20:.1f}"
        gflops = "-" if row["gflops"] is None else f"{row['gflops']:.1f}"
        lines.append(
            f"{row['model']:<8} {backend:<16} {row['batch']:>5} {row['ms']:>9.3f} {row['ms_min']:>9.3f} "
            f"{row['ms_iqr']:>8.3f} {row['ratio_vs_builtin']:>10.3f} {row['ratio_iqr']:>6.3f} "
            f"{row['saved_bytes'] / 2**20:>9.3f} {peak:>8} {gflops:>8}"
        )
    lines.append("")
    for batch, by_backend in report["gemm_efficiency_by_batch"].items():
        values = ", ".join(f"{name} {value:.2f}" for name, value in by_backend.items())
        lines.append(f"gemm efficiency at batch {batch} (mlp step FLOP rate / torch.mm on its GEMM shapes): {values}")
    d = report["data"]
    lines += [
        f"data, one epoch of {d['images']} images in batches of {d['batch']} ({d['source']}):",
        f"  DeviceBatches {d['device_batches_ms']:.1f} ms, DataLoader {d['dataloader_ms']:.1f} ms: "
        f"{d['speedup']:.1f}x faster",
        f"  DataLoader = {d['dataloader_setup']}",
    ]
    return "\n".join(lines)
