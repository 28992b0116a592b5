"""``mlp-torch bench --end-to-end``: whole training epochs, against the GEMM limit and a plain-PyTorch script.

Three numbers, measured in one run on the same images and threads:

* ``epoch_seconds``: the median wall time of one epoch of ``mlp-torch train``'s default job (the
  3072-512-2 sigmoid MLP, SGD, batch 128) on cat/dog, everything included: batching and
  augmentation, the steps, validation, TensorBoard, checkpoints (from one epoch's end to the next);
* ``gemm_limit_epoch_seconds``: what the epoch's matrix products alone take, from the model's
  FLOPs at the rate of bare ``torch.mm`` on the step's own GEMM shapes, timed just before the first
  epoch and just after the run (:class:`GemmRate`), so that it brackets the epochs. Per training
  image and layer ``in → out``: ``2·in·out`` for the forward ``x Wᵀ``, as many for ``dW = daᵀ x``
  and, above the first layer, for ``dx = da W``; per validation image the forward.
  ``gemm_fraction`` = limit / measured: 1.0 would mean nothing but GEMMs. On the CPU the same
  GEMMs are timed through oneDNN beside them (``onednn_gflops_per_second``): ``torch.mm`` is MKL's,
  which on x86 CPUs not made by Intel runs its AVX2 kernels, so there the machine's limit is lower;
* ``plain_pytorch_epoch_seconds``: the same job written as an idiomatic script
  (``scripts/plain_pytorch_baseline.py``: ImageFolder + DataLoader + torchvision transforms +
  ``nn.Sequential``, at the best DataLoader worker count it finds), run as its own process.
  ``vs_plain_pytorch`` = ours / theirs: below 1 we are faster.

The images are the real CIFAR-10 JPEGs when ``--data-root`` (or ``../shared/data/cifar10-jpg``)
holds ``train/`` and ``test/`` folders of the two classes, else synthetic images of the same
shape, written as PNG files for both sides to read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..bench import Spread, gemm_calls, onednn_matmul, time_call
from ..data import DataOptions, load_data
from ..errors import MlpTorchError, UsageError
from ..models import Classifier
from .callbacks import default_callbacks
from .config import TrainConfig
from .loop import Callback, CallbackList
from .state import TrainState
from .trainer import fit, start_run

REPO = Path(__file__).resolve().parents[2]
BASELINE_SCRIPT = REPO / "scripts" / "plain_pytorch_baseline.py"
# where the real JPEGs are looked for after --data-root: beside the checkout, as on the team's machines
SHARED_JPEGS = (Path("..") / "shared" / "data" / "cifar10-jpg", REPO.parent / "shared" / "data" / "cifar10-jpg")
CLASSES = ("cat", "dog")
# oneDNN this much faster than torch.mm on the same GEMMs: more than two runs' noise, MKL's code path
MKL_HELD_BACK = 1.25


@dataclass
class EndToEndSettings:
    """What to run; ``quick`` is a few epochs (under two minutes on 2 CPU cores with the real JPEGs).

    Five, not fewer: the first epoch warms up, the second shares the cores with the background write
    of the first one's checkpoints, and the last draws the figures, so of three epochs the median
    would be one of those. Of five it is the slower of the two ordinary epochs or the fastest of the
    other three, often the warm-up (3 of 5 runs on 2026-11-26, 2-core machine: 1-4 % above the
    slower ordinary epoch); the full run's ten epochs hold six ordinary ones (the fifth draws the
    figures too), so its median is an ordinary epoch's.
    """

    epochs: int = 10
    gemm_rounds: int = 20
    batch_size: int = 128
    synthetic_train_per_class: int = 1000  # without the JPEGs: synthetic 32x32 images of two classes
    synthetic_test_per_class: int = 200
    synthetic_image_size: int = 32
    baseline_workers: list[int] | None = None  # None: the script tries 0 .. CPU count
    probe_batches: int = 20

    @classmethod
    def quick(cls) -> EndToEndSettings:
        return cls(epochs=5, gemm_rounds=10)


class EpochTimer(Callback):
    """Wall seconds of each whole epoch: from the previous epoch's end (or the start) to this one's."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.last = 0.0

    def on_train_start(self, state: TrainState) -> None:
        self.last = time.perf_counter()

    def on_epoch_end(self, state: TrainState) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self.last)
        self.last = now


def load_average() -> float | None:
    """The 1-minute load average (``None`` where the system has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def find_images(data_root: Path) -> Path | None:
    """The first of ``data_root``, ``../shared/data/cifar10-jpg`` that holds cat and dog train and test folders."""
    for root in (Path(data_root), *SHARED_JPEGS):
        if all((root / split / name).is_dir() for split in ("train", "test") for name in CLASSES):
            return root.resolve()
    return None


def write_synthetic_folder(folder: Path, settings: EndToEndSettings, seed: int) -> Path:
    """Our synthetic CIFAR-shaped images as PNG files ``folder/{train,test}/{cat,dog}/N.png``."""
    from PIL import Image

    options = DataOptions(
        dataset="synthetic",
        classes=list(CLASSES),
        val_fraction=0.0,
        cache=False,
        seed=seed,
        image_size=settings.synthetic_image_size,
        synthetic_train_per_class=settings.synthetic_train_per_class,
        synthetic_test_per_class=settings.synthetic_test_per_class,
    )
    bundle = load_data(options)
    for split_name, split in (("train", bundle.train), ("test", bundle.test)):
        for name in CLASSES:
            (folder / split_name / name).mkdir(parents=True, exist_ok=True)
        pixels = split.x.permute(0, 2, 3, 1).numpy()  # N,H,W,3
        for i, (image, label) in enumerate(zip(pixels, split.y.tolist())):
            Image.fromarray(image).save(folder / split_name / CLASSES[label] / f"{i:05d}.png")
    return folder


class GemmRate(Callback):
    """Bare ``torch.mm``'s rate on the run's own GEMM shapes, as training starts (before the epochs' clock).

    :func:`train_ours` measures it again once the run has ended, so the limit brackets the very
    epochs it is compared with: a machine that runs slower for a while (other jobs, clocks) slows both.
    The calls and their FLOPs are ``mlp-torch bench``'s (:func:`~mlp_torch.bench.gemm_calls`). On a
    CPU the same calls through oneDNN (:func:`~mlp_torch.bench.onednn_matmul`) are timed beside
    them, for the report only: where MKL holds back, the machine's GEMMs are faster than ``torch.mm``'s.
    """

    def __init__(self, batch_size: int, rounds: int) -> None:
        self.batch_size, self.rounds = batch_size, rounds
        self.gemms: Callable[[], None] | None = None
        self.onednn_gemms: Callable[[], None] | None = None
        self.train_flops_per_image = 0.0
        self.forward_flops_per_image = 0.0
        self.rates: list[float] = []  # FLOP/s, one figure per round
        self.onednn_rates: list[float] = []  # the same through oneDNN (CPU, float32, where PyTorch has it)

    def on_train_start(self, state: TrainState) -> None:
        self.gemms, flops = gemm_calls(state.model, self.batch_size, state.device)
        matmul = onednn_matmul() if state.device.type == "cpu" else None
        if matmul is not None:
            self.onednn_gemms, _ = gemm_calls(state.model, self.batch_size, state.device, matmul)
        self.train_flops_per_image = flops / self.batch_size
        self.forward_flops_per_image = forward_flops(state.model)
        self.measure(state.device)

    def measure(self, device: torch.device) -> None:
        """One warm-up call of the GEMMs, then ``rounds`` timed ones: their FLOP/s into :attr:`rates` (and oneDNN's)."""
        assert self.gemms is not None, "on_train_start first"
        clock = "cuda-events" if device.type == "cuda" else "wall"
        for gemms, rates in ((self.gemms, self.rates), (self.onednn_gemms, self.onednn_rates)):
            if gemms is not None:
                times = [time_call(gemms, device, clock) for _ in range(self.rounds + 1)][1:]
                rates += [self.train_flops_per_image * self.batch_size / (ms / 1e3) for ms in times]


def forward_flops(model: Classifier) -> float:
    """The FLOPs of one image's forward pass through ``model``'s layers: ``2·in·out`` each."""
    return 2.0 * sum(layer.weight.numel() for layer in model.layers)


def train_ours(
    runs_dir: Path, data: DataOptions, settings: EndToEndSettings, device: str, seed: int
) -> tuple[list[float], dict[str, Any], TrainState, GemmRate]:
    """``mlp-torch train``'s default job on ``data``: its per-epoch wall times, final metrics, state,
    and the ``torch.mm`` rate on its GEMM shapes just before and just after its epochs."""
    config = TrainConfig(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        seed=seed,
        device=device,
        runs_dir=runs_dir,
        progress=False,
        data=data,
    )
    timer, gemm_rate = EpochTimer(), GemmRate(settings.batch_size, settings.gemm_rounds)
    with start_run(config) as state:
        # every callback of a run but the console lines (the bench prints its own report); the rate
        # first, the epochs' clock last: the clock starts once the others have started
        callbacks = default_callbacks(state, console=False)
        metrics = fit(state, CallbackList([gemm_rate, *callbacks, timer]))
    gemm_rate.measure(state.device)  # the run closed: after
    return timer.seconds, metrics, state, gemm_rate


def run_baseline(
    root: Path, settings: EndToEndSettings, device: torch.device, seed: int, threads: int
) -> dict[str, Any]:
    """``scripts/plain_pytorch_baseline.py`` in its own process; its JSON result."""
    if not BASELINE_SCRIPT.is_file():
        raise UsageError(
            f"the plain-PyTorch baseline {BASELINE_SCRIPT} is not here (an installed copy without the "
            "repository's scripts/): run the bench from a checkout of mlp_torch"
        )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "baseline.json"
        command = [
            sys.executable,
            str(BASELINE_SCRIPT),
            f"--data-root={root}",
            f"--classes={','.join(CLASSES)}",
            f"--epochs={settings.epochs}",
            f"--batch-size={settings.batch_size}",
            f"--probe-batches={settings.probe_batches}",
            f"--threads={threads}",
            f"--device={device.type}",
            f"--seed={seed}",
            f"--json={out}",
        ]
        if settings.baseline_workers is not None:
            command += ["--workers", *map(str, settings.baseline_workers)]
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["(no message)"]
            raise MlpTorchError(f"the plain-PyTorch baseline failed (exit {done.returncode}): {tail[0]}")
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def image_root(data_root: Path, settings: EndToEndSettings, seed: int, scratch: Path) -> tuple[Path, bool]:
    """The folder both sides read, and whether it holds the real JPEGs (else synthetic PNGs written to ``scratch``)."""
    found = find_images(data_root)
    if found is not None:
        return found, True
    return write_synthetic_folder(scratch / "images", settings, seed), False


def run_end_to_end(data_root: Path, device: torch.device, settings: EndToEndSettings, seed: int = 0) -> dict[str, Any]:
    """Measure ours, the GEMM limit and the plain-PyTorch script; the report ``--json`` writes."""
    threads = torch.get_num_threads()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="mlp-torch-bench-") as tmp:
        scratch = Path(tmp)
        root, real = image_root(data_root, settings, seed, scratch)
        data = DataOptions(dataset="folder", data_root=root, classes=list(CLASSES))
        if not real:  # the synthetic images at their size, decoded into the scratch folder
            data = dataclasses.replace(data, image_size=settings.synthetic_image_size, cache_dir=scratch)
        seconds, metrics, state, gemm_rate = train_ours(scratch / "runs", data, settings, str(device), seed)
        n_train, n_val = len(state.data.train), len(state.data.val)
        baseline = run_baseline(root, settings, device, seed, threads)
    rate = statistics.median(gemm_rate.rates)
    onednn_rate = statistics.median(gemm_rate.onednn_rates) if gemm_rate.onednn_rates else None
    epoch_flops = n_train * gemm_rate.train_flops_per_image + n_val * gemm_rate.forward_flops_per_image
    limit = epoch_flops / rate
    ours, theirs = Spread.of(seconds), Spread.of(baseline["epoch_seconds_each"])
    epoch, plain = ours.median, theirs.median
    return {
        "device": str(device),
        "torch": torch.__version__,
        "threads": threads,
        "load_average": {"before": load_before, "after": load_average()},  # a shared machine's noise
        "images": f"JPEG images from {root}" if real else "synthetic PNG images",
        "end_to_end": {
            "epochs": settings.epochs,
            "train_images": n_train,
            "val_images": n_val,
            "epoch_seconds": epoch,
            "epoch_seconds_min": ours.min,
            "epoch_seconds_iqr": ours.iqr,
            "epoch_seconds_mean": statistics.mean(seconds),  # with the figure epochs' share
            "epoch_seconds_each": seconds,
            "gemm_gflops_per_second": rate / 1e9,
            "gemm_limit_epoch_seconds": limit,
            "gemm_fraction": limit / epoch,
            # the same GEMMs through oneDNN (CPU; None elsewhere): above torch.mm's, MKL holds this CPU back
            "onednn_gflops_per_second": None if onednn_rate is None else onednn_rate / 1e9,
            "onednn_gemm_limit_epoch_seconds": None if onednn_rate is None else epoch_flops / onednn_rate,
            "plain_pytorch_epoch_seconds": plain,
            "plain_pytorch_epoch_seconds_min": theirs.min,
            "plain_pytorch_epoch_seconds_iqr": theirs.iqr,
            "plain_pytorch_epoch_seconds_each": baseline["epoch_seconds_each"],
            "plain_pytorch_workers": baseline["workers"],
            "vs_plain_pytorch": epoch / plain,
            "accuracy": metrics["test_accuracy"],
            "plain_pytorch_accuracy": baseline["accuracy"],
        },
    }


def format_end_to_end(report: dict[str, Any]) -> str:
    """The report as a few lines for the terminal."""
    e = report["end_to_end"]
    return "\n".join(
        [
            f"end to end: {e['epochs']} epochs of the default MLP on {e['train_images']} {report['images']}, "
            f"{report['device']}, {report['threads']} thread(s)",
            f"  mlp-torch train          {e['epoch_seconds']:8.3f} s/epoch   "
            f"test accuracy {100 * e['accuracy']:.2f} %   "
            f"(min {e['epoch_seconds_min']:.3f}, IQR {e['epoch_seconds_iqr']:.3f}, mean {e['epoch_seconds_mean']:.3f})",
            f"  GEMM limit               {e['gemm_limit_epoch_seconds']:8.3f} s/epoch   "
            f"({e['gemm_gflops_per_second']:.0f} GFLOP/s of torch.mm)   gemm_fraction {e['gemm_fraction']:.2f}",
            *onednn_line(e),
            f"  plain PyTorch script     {e['plain_pytorch_epoch_seconds']:8.3f} s/epoch   "
            f"test accuracy {100 * e['plain_pytorch_accuracy']:.2f} %   ({e['plain_pytorch_workers']} workers; "
            f"min {e['plain_pytorch_epoch_seconds_min']:.3f}, IQR {e['plain_pytorch_epoch_seconds_iqr']:.3f})",
            f"  vs_plain_pytorch         {e['vs_plain_pytorch']:8.3f}",
        ]
    )


def onednn_line(e: dict[str, Any]) -> list[str]:
    """The report's line on the same GEMMs through oneDNN, where they were timed."""
    if e.get("onednn_gflops_per_second") is None:
        return []
    times = e["onednn_gflops_per_second"] / e["gemm_gflops_per_second"]
    why = ": MKL holds this CPU back (README, Performance)" if times > MKL_HELD_BACK else ""
    return [
        f"  the GEMMs by oneDNN      {e['onednn_gemm_limit_epoch_seconds']:8.3f} s/epoch   "
        f"({e['onednn_gflops_per_second']:.0f} GFLOP/s, {times:.1f}x torch.mm{why})"
    ]
