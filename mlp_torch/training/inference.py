"""Use a finished run: evaluate a checkpoint on a split, or classify image files (or 2-D points) with it.

A checkpoint carries everything needed: the model config and weights, the class names, the
image size (0 for 2-D points) and the training split's normalisation, checked against each other before anything is
built (:func:`~mlp_torch.training.checkpoint.validate_checkpoint`). ``evaluate_checkpoint`` also
needs the data. Which data (dataset, classes, image size, seed and validation fraction, so the
same split) come from the run directory's ``config.json``, or from the checkpoint itself when it is
a lone file; where they are comes from that ``config.json`` or from ``--data-root``. Nothing is
ever downloaded, and no URL, md5 or cache folder is taken from either file
(:func:`~mlp_torch.data.saved.data_options_from_saved`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import DataOptions, Preprocessor, load_data, preprocessor_from_state
from ..data.folder import read_image
from ..data.saved import data_options_from_saved
from ..errors import CheckpointError, DataError, UsageError
from ..models import Classifier, build_model
from .checkpoint import load_checkpoint, validate_checkpoint
from .evaluation import EvalResult, evaluate

SPLITS = ("test", "val", "train")


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, ready for inference."""

    model: Classifier
    standardizer: Preprocessor
    classes: list[str]
    image_size: int  # 0: the model classifies 2-D points
    checkpoint: dict[str, Any]

    @property
    def takes_points(self) -> bool:
        """Whether the model was trained on a 2-D dataset's points (x₁, x₂) rather than images."""
        return self.image_size == 0


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
    file = resolve_checkpoint(path)
    ckpt = load_checkpoint(file, map_location=device)
    validate_checkpoint(ckpt, file)  # before build_model allocates anything the config claims
    try:
        dtype = next(t.dtype for t in ckpt["model_state"].values() if t.is_floating_point())  # --dtype of the run
        model = build_model(**ckpt["model_config"]).to(device=device, dtype=dtype)
        model.load_state_dict(ckpt["model_state"])
        standardizer = preprocessor_from_state(ckpt["standardizer"], ckpt.get("whitener")).to(device)
    except (TypeError, KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: the checkpoint's model does not match its config ({err})") from None
    model.eval()
    return LoadedModel(model, standardizer, list(ckpt["classes"]), int(ckpt["image_size"]), ckpt)


def run_dir_of(path: Path) -> Path | None:
    """The run directory a checkpoint belongs to: ``path`` itself, or ``RUN/checkpoints/x.pt`` -> ``RUN``."""
    path = Path(path)
    run = path if path.is_dir() else path.parent.parent if path.parent.name == "checkpoints" else None
    return run if run is not None and (run / "config.json").is_file() else None


def eval_data_options(
    path: Path, checkpoint: dict[str, Any], data_root: Path | None = None, cache_dir: Path | None = None
) -> DataOptions:
    """Where and which data to evaluate a checkpoint on, trusting neither file with locations.

    Args:
        path: the run directory or checkpoint file the user named.
        checkpoint: the loaded checkpoint.
        data_root: ``--data-root``: where the data live now (required for a lone checkpoint file).
        cache_dir: ``--cache-dir``; else the default cache folder.

    Raises:
        UsageError: a lone checkpoint file without ``data_root`` (and not of synthetic data).
        DataError: the saved data options are malformed.
    """
    overrides: dict[str, Any] = {}
    if data_root is not None:
        overrides["data_root"] = Path(data_root)
    if cache_dir is not None:
        overrides["cache_dir"] = Path(cache_dir)
    run = run_dir_of(path)
    if run is not None:
        config_path = run / "config.json"
        try:
            saved = json.loads(config_path.read_text())["config"]["data"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"{config_path} is not a readable run config ({type(err).__name__}: {err})") from None
        return data_options_from_saved(saved, str(config_path), overrides)
    saved = checkpoint.get("config", {}).get("data")
    opts = data_options_from_saved(saved, str(path), overrides)
    if data_root is None and opts.dataset != "synthetic":
        raise UsageError(
            f"{path} is not inside a run directory, so where its {opts.dataset} data live is unknown; "
            "pass --data-root DIR (the data root it was trained on)"
        )
    return opts


def evaluate_checkpoint(
    path: Path,
    device: torch.device,
    split: str = "test",
    data_root: Path | None = None,
    cache_dir: Path | None = None,
) -> tuple[EvalResult, list[str]]:
    """Metrics of a checkpoint on one split of the data it was trained on; never downloads.

    Args:
        path: a run directory or checkpoint file.
        device: where to run.
        split: ``test``, ``val`` or ``train``.
        data_root: where the data live now, if they moved since training; required for a
            checkpoint file that is not inside its run directory.
        cache_dir: where decoded datasets are cached (default: the default cache folder).
    """
    if split not in SPLITS:
        raise UsageError(f"--split {split!r} is not one of: {', '.join(SPLITS)}")
    loaded = load_model(path, device)
    opts = eval_data_options(path, loaded.checkpoint, data_root, cache_dir)
    bundle = load_data(opts, allow_download=False)
    if bundle.classes != loaded.classes or bundle.image_size != loaded.image_size:
        raise CheckpointError(
            f"the data hold classes {bundle.classes} {_inputs(bundle.image_size)}, the checkpoint "
            f"{loaded.classes} {_inputs(loaded.image_size)}; pass --data-root DIR with the data it was trained on"
        )
    data = bundle.splits()[split]
    if len(data) == 0:
        raise DataError(f"the {split} split of {bundle.source} is empty (was the run trained with --val-fraction 0?)")
    data = data.to(device)
    return evaluate(loaded.model, data.x, data.y, loaded.standardizer), loaded.classes


def _inputs(image_size: int) -> str:
    return "of 2-D points" if image_size == 0 else f"at {image_size} px"


def predict_images(loaded: LoadedModel, images: list[Path], top: int = 3) -> list[list[tuple[str, float]]]:
    """For each image file, the ``top`` classes with their softmax probabilities, most likely first.

    Args:
        loaded: from :func:`load_model`, a model of images.
        images: image files of any size and mode (resized and converted as in training).
        top: how many classes to return per image.
    """
    if loaded.takes_points:
        raise UsageError("this model classifies 2-D points, not images: give points as x,y, e.g. 0.5,-1.2")
    pixels = torch.stack([read_image(p, loaded.image_size) for p in images])  # B,3,S,S uint8
    return _top_classes(loaded, pixels, top)


def parse_point(text: str) -> tuple[float, float]:
    """``"0.5,-1.2"`` -> ``(0.5, -1.2)``: a point of the plane, as ``predict`` takes it.

    Raises:
        UsageError: not two finite numbers separated by a comma.
    """
    parts = text.split(",")
    try:
        x1, x2 = (float(part) for part in parts)
    except ValueError:
        x1 = x2 = math.nan
    if not (math.isfinite(x1) and math.isfinite(x2)):
        raise UsageError(f"{text!r} is not a point x,y: two finite numbers separated by a comma, e.g. 0.5,-1.2")
    return x1, x2


def predict_points(
    loaded: LoadedModel, points: list[tuple[float, float]], top: int = 3
) -> list[list[tuple[str, float]]]:
    """For each point ``(x₁, x₂)``, in the data's own units, the ``top`` classes with their probabilities.

    Args:
        loaded: from :func:`load_model`, a model of a 2-D dataset.
        points: the points, before standardisation (as the training data were given).
        top: how many classes to return per point.
    """
    if not loaded.takes_points:
        raise UsageError("this model classifies images: give image files, not points")
    return _top_classes(loaded, torch.tensor(points, dtype=torch.float32).reshape(-1, 2), top)


@torch.no_grad()
def _top_classes(loaded: LoadedModel, inputs: torch.Tensor, top: int) -> list[list[tuple[str, float]]]:
    """The ``top`` classes of each raw input and their softmax probabilities (for a sigmoid output
    ``[1 − σ(p), σ(p)]``, since its logits are ``[0, p]``), most likely first."""
    parameter = next(loaded.model.parameters())
    x = loaded.standardizer(inputs.to(parameter.device), parameter.dtype)
    probs = torch.softmax(loaded.model(x), dim=1)  # B,C
    k = min(top, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    return [
        [(loaded.classes[i], float(v)) for v, i in zip(vs.tolist(), idx.tolist())] for vs, idx in zip(values, indices)
    ]
