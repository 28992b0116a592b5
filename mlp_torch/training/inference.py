"""Use a finished run: evaluate a checkpoint on a split, or classify image files with it.

A checkpoint carries everything needed: the model config and weights, the class names, the
image size and the training split's normalisation. ``evaluate_checkpoint`` also needs the data,
which it reloads from the run's saved data options (the same seed gives the same validation split).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import Standardizer, load_data
from ..data.folder import read_image
from ..errors import CheckpointError, UsageError
from ..models import Classifier, build_model
from .checkpoint import load_checkpoint
from .config import data_options_from_dict
from .evaluation import EvalResult, evaluate

SPLITS = ("test", "val", "train")


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, ready for inference."""

    model: Classifier
    standardizer: Standardizer
    classes: list[str]
    image_size: int
    checkpoint: dict[str, Any]


def resolve_checkpoint(path: Path) -> Path:
    """A run directory means its ``checkpoints/best.pt``; a file is taken as it is."""
    path = Path(path)
    if path.is_dir():
        best = path / "checkpoints" / "best.pt"
        if not best.is_file():
            raise CheckpointError(
                f"{path} is a folder without checkpoints/best.pt; "
                "pass a run directory made by mlp-torch train, or a .pt file"
            )
        return best
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run directory or a checkpoint file")
    return path


def load_model(path: Path, device: torch.device) -> LoadedModel:
    """Rebuild the model and normalisation stored in a checkpoint (or a run directory's best.pt).

    Args:
        path: a run directory or a ``.pt`` file written by ``mlp-torch train``.
        device: where the model should live.
    """
    ckpt = load_checkpoint(resolve_checkpoint(path), map_location=device)
    try:
        model = build_model(**ckpt["model_config"]).to(device)
        model.load_state_dict(ckpt["model_state"])
        standardizer = Standardizer.from_state_dict(ckpt["standardizer"]).to(device)
    except (TypeError, KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: the checkpoint's model does not match its config ({err})") from None
    model.eval()
    return LoadedModel(model, standardizer, list(ckpt["classes"]), int(ckpt["image_size"]), ckpt)


def evaluate_checkpoint(
    path: Path, device: torch.device, split: str = "test", data_root: Path | None = None
) -> tuple[EvalResult, list[str]]:
    """Metrics of a checkpoint on one split of the data it was trained on.

    Args:
        path: a run directory or checkpoint file.
        device: where to run.
        split: ``test``, ``val`` or ``train``.
        data_root: where the data live now, if they moved since training.
    """
    if split not in SPLITS:
        raise UsageError(f"--split {split!r} is not one of: {', '.join(SPLITS)}")
    loaded = load_model(path, device)
    saved = loaded.checkpoint.get("config", {}).get("data")
    if saved is None:
        raise CheckpointError(f"{path} does not record which data it was trained on")
    opts = data_options_from_dict(saved)
    if data_root is not None:
        opts.data_root = Path(data_root)
    bundle = load_data(opts)
    if bundle.classes != loaded.classes:
        raise CheckpointError(f"the data now hold classes {bundle.classes}, the checkpoint {loaded.classes}")
    if len(bundle.splits()[split]) == 0:
        why = f" (--val-fraction {opts.val_fraction:g} held out none)" if split == "val" else ""
        raise UsageError(f"{path}: its {split} split has no images{why}; evaluate another --split")
    data = bundle.splits()[split].to(device)
    return evaluate(loaded.model, data.x, data.y, loaded.standardizer), loaded.classes


@torch.no_grad()
def predict_images(loaded: LoadedModel, images: list[Path], top: int = 3) -> list[list[tuple[str, float]]]:
    """For each image file, the ``top`` classes with their softmax probabilities, most likely first.

    Args:
        loaded: from :func:`load_model`.
        images: image files of any size and mode (resized and converted as in training).
        top: how many classes to return per image.
    """
    device = next(loaded.model.parameters()).device
    pixels = torch.stack([read_image(p, loaded.image_size) for p in images]).to(device)  # B,3,S,S uint8
    x = loaded.standardizer(pixels).to(next(loaded.model.parameters()).dtype)
    probs = torch.softmax(loaded.model(x), dim=1)  # B,C
    k = min(top, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    return [
        [(loaded.classes[i], float(v)) for v, i in zip(vs.tolist(), idx.tolist())] for vs, idx in zip(values, indices)
    ]
