"""What pip sees: lower bounds only (a newer torch must install), a license, the usual classifiers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_dependencies_have_lower_bounds_only(project):
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+>=[0-9.]+", requirement), f"{requirement}: a cap or a pin"
    names = {re.split(">=", r)[0] for r in project["dependencies"]}
    assert {"torch", "torchvision", "tensorboard", "tqdm", "pillow", "numpy"} <= names


def test_license_file_and_classifiers(project):
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 mlp_torch contributors" in text
    classifiers = set(project["classifiers"])
    assert {f"Programming Language :: Python :: 3.{minor}" for minor in range(10, 14)} <= classifiers
    assert "Topic :: Scientific/Engineering :: Artificial Intelligence" in classifiers
    assert {"Intended Audience :: Education", "Intended Audience :: Science/Research"} <= classifiers
    assert project["requires-python"] == ">=3.10"
