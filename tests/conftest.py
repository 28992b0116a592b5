"""Shared fixtures: every test that takes ``device`` runs on the CPU and, when present, on CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))]

# Real CIFAR-10 as JPEG folders, beside the repository (absent on machines without ../shared).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)
