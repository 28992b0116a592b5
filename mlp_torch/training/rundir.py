"""The run directory: a fresh folder per run, and the files that describe it (strict JSON)."""

from __future__ import annotations

import math
import platform
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import UsageError


def make_run_dir(runs_dir: Path, name: str) -> Path:
    """A new ``runs_dir/<date-time>_<name>`` folder; never reuses an existing one."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        candidate = runs_dir / (f"{stamp}_{name}" + (f"-{attempt}" if attempt else ""))
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise UsageError(f"could not create a new run directory under {runs_dir}")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    import tensorboard
    import torchvision

    return {
        "mlp_torch": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "tensorboard": tensorboard.__version__,
        "python": platform.python_version(),
    }


def nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    return value


def json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
