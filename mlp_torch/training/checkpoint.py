"""Checkpoints that can neither run code nor be half-written.

* **Safe to load.** A checkpoint holds only tensors and plain Python types (dicts, lists, str,
  int, float, bool, None) and is read with ``torch.load(weights_only=True)``: opening a file
  from a stranger cannot execute anything.
* **Atomic.** It is serialised in memory, written to a temporary file in the same folder, flushed
  and fsynced, then renamed over the old one; a crash or a full disk mid-save leaves the previous
  checkpoint intact.
* **Self-describing.** ``format``/``version`` tell an mlp_torch checkpoint from any other file;
  it carries the model config, class names, image size (0 for the 2-D datasets' points) and
  normalisation, so ``predict`` needs nothing else.
* **Checked before use.** :func:`validate_checkpoint` (which ``eval`` and ``predict`` run) derives
  the model's shape from the tensors actually in the file and requires the config, class names,
  image size and standardiser to agree with it, so a doctored config can neither make
  ``build_model`` allocate what the file does not hold nor label predictions with the letters of
  a string.
"""

from __future__ import annotations

import io
import math
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ..data.planar import PLANAR_DATASETS, PLANAR_FEATURES
from ..errors import CheckpointError
from ..models import ACTIVATIONS, BACKENDS, MODEL_KINDS, OUTPUTS
from ..utils import atomic_write

FORMAT = "mlp_torch.checkpoint"
VERSION = 1
REQUIRED = ("model_config", "model_state", "classes", "image_size", "standardizer")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors and plain types) to ``path`` atomically.

    Args:
        path: the destination; its folder must exist.
        payload: the checkpoint contents; ``format`` and ``version`` are added.

    Raises:
        TypeError: ``payload`` holds something other than tensors and plain types (a bug in the
            caller: ``weights_only=True`` would refuse to load it).
        OSError: the file could not be written (full disk, file-size limit, permissions), with
            the system's reason; any previous ``path`` is intact.
    """
    write_checkpoint_bytes(path, checkpoint_bytes(payload))


def checkpoint_bytes(payload: dict[str, Any]) -> memoryview:
    """``payload`` serialised as :func:`save_checkpoint` writes it: a snapshot, whatever changes afterwards.

    Raises:
        TypeError: as :func:`save_checkpoint`.
    """
    data = {"format": FORMAT, "version": VERSION, **payload}
    _check_plain(data, "checkpoint")  # before touching the disk: never write a file that cannot be loaded
    # In memory first: torch.save writing to a full disk raises a RuntimeError that does not say why
    # ("unexpected pos 704 vs 598"); a plain write raises OSError with the reason (ENOSPC, EFBIG).
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return buffer.getbuffer()


def write_checkpoint_bytes(path: Path, data: memoryview) -> None:
    """Write what :func:`checkpoint_bytes` made to ``path`` atomically (OSError as :func:`save_checkpoint`)."""
    with atomic_write(Path(path), mode=0o600) as f:  # private, as mkstemp made checkpoints before
        f.write(data)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True``.

    Args:
        path: a ``.pt`` file.
        map_location: where tensors are loaded.

    Raises:
        CheckpointError: missing, truncated, foreign or newer-format file, with what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path} is not a file; pass a run directory or a checkpoint such as RUN_DIR/checkpoints/best.pt"
        )
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err):  # the weights-only unpickler refused to import something
            raise CheckpointError(
                f"{path} holds Python objects other than tensors and plain types, which a checkpoint "
                "may not; it was refused without running anything, and mlp-torch train did not "
                "write it"
            ) from None
        raise CheckpointError(f"{path} is not a readable mlp_torch checkpoint: {_what_went_wrong(head, err)}") from None
    except Exception as err:  # torch.load on damaged bytes raises almost anything (KeyError, OSError, RuntimeError...)
        raise CheckpointError(f"{path} is not a readable mlp_torch checkpoint: {_what_went_wrong(head, err)}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an mlp_torch checkpoint (no '{FORMAT}' marker); was it written by another program?"
        )
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, newer than this mlp_torch reads ({VERSION}); "
            "upgrade mlp_torch"
        )
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it is damaged or was not written by mlp-torch train")
    return data


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _dense(tensor: torch.Tensor) -> bool:
    """Whether the bytes of every element are really in the file: a zero-stride view of one number
    can claim any shape, and a model built to that shape would allocate it."""
    return tensor.is_contiguous() and tensor.untyped_storage().nbytes() >= tensor.numel() * tensor.element_size()


def _layer_shapes(state: Any, path: Path) -> list[tuple[int, int]]:
    """``(out, in)`` of each dense layer, read from the tensors ``layers.{i}.weight`` / ``layers.{i}.bias``."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(
            f"{path}: the checkpoint's model_state {what}; it is damaged or was not written by mlp-torch"
        )

    if not isinstance(state, dict) or not state or not all(isinstance(k, str) for k in state):
        raise bad("is not a dict of named tensors")
    layers = len(state) // 2
    expected = {f"layers.{i}.{p}" for i in range(layers) for p in ("weight", "bias")}
    if set(state) != expected:
        raise bad(f"has the entries {', '.join(sorted(state))}, not layers.0..{layers - 1}.weight/bias")
    shapes: list[tuple[int, int]] = []
    for i in range(layers):
        weight, bias = state[f"layers.{i}.weight"], state[f"layers.{i}.bias"]
        if not (isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)):
            raise bad(f"holds a non-tensor at layer {i}")
        if not (_dense(weight) and _dense(bias)):
            raise bad(f"has strided views instead of stored tensors at layer {i}")
        if not (weight.is_floating_point() and bias.dtype == weight.dtype):
            raise bad(f"has {weight.dtype}/{bias.dtype} tensors at layer {i}, not one floating-point dtype")
        if weight.dim() != 2 or bias.shape != weight.shape[:1] or 0 in weight.shape:
            raise bad(
                f"has layer {i} weight {tuple(weight.shape)} and bias {tuple(bias.shape)}, not (out, in) and (out,)"
            )
        if shapes and weight.shape[1] != shapes[-1][0]:
            raise bad(f"does not chain: layer {i - 1} gives {shapes[-1][0]} outputs, layer {i} takes {weight.shape[1]}")
        shapes.append((int(weight.shape[0]), int(weight.shape[1])))
    return shapes


def validate_checkpoint(data: dict[str, Any], path: Path) -> None:
    """Check that a checkpoint's model config, class names, image size and standardiser agree with its tensors.

    The model's shape comes from the tensors in the file; everything else must match it, so
    nothing sized by a config value is allocated before that value is known to be true.

    Args:
        data: the loaded checkpoint (with every key of ``REQUIRED``).
        path: the file, for messages.

    Raises:
        CheckpointError: one line naming the first disagreement.
    """

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: {what}; the file is damaged or was not written by mlp-torch train")

    config = data["model_config"]
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise bad("its model_config is not a dict")
    kind = config.get("kind")
    if kind not in MODEL_KINDS:
        raise bad(f"its model kind {kind!r} is not one of {', '.join(MODEL_KINDS)}")
    allowed = (
        {"kind", "in_features", "num_classes", "backend"}
        | ({"seed", "output"} if kind != "perceptron" else set())
        | ({"hidden", "activation"} if kind == "mlp" else set())
    )
    if set(config) - allowed:
        raise bad(f"its {kind} model_config has unknown key(s) {', '.join(sorted(set(config) - allowed))}")
    if config.get("backend") not in BACKENDS:
        raise bad(f"its backend {config.get('backend')!r} is not one of {', '.join(BACKENDS)}")
    if kind == "mlp" and config.get("activation") not in ACTIVATIONS:
        raise bad(f"its activation {config.get('activation')!r} is not one of {', '.join(ACTIVATIONS)}")
    output = config.get("output", "softmax")  # absent from checkpoints made before the sigmoid output
    if output not in OUTPUTS:
        raise bad(f"its output {output!r} is not one of {', '.join(OUTPUTS)}")
    if config.get("seed") is not None and not _int(config["seed"]):
        raise bad(f"its model seed {config['seed']!r} is not an integer")
    hidden = config.get("hidden", [])
    sizes_ok = _int(config.get("in_features")) and _int(config.get("num_classes"))
    if not (sizes_ok and isinstance(hidden, list) and all(map(_int, hidden))):
        raise bad("its model_config sizes (in_features, num_classes, hidden) are not integers")
    in_features: int = config["in_features"]
    num_classes: int = config["num_classes"]

    shapes = _layer_shapes(data["model_state"], path)
    if output == "sigmoid" and num_classes != 2:
        raise bad(f"its sigmoid output is one unit for two classes, its config says {num_classes}")
    # the binary perceptron and the sigmoid output have one unit
    outputs = 1 if (kind == "perceptron" and num_classes == 2) or output == "sigmoid" else num_classes
    claimed = [in_features, *hidden, outputs]
    actual = [shapes[0][1], *(out for out, _ in shapes)]
    if claimed != actual:
        raise bad(
            f"its model_config describes layer sizes {'-'.join(map(str, claimed))}, its tensors hold "
            f"{'-'.join(map(str, actual))}"
        )
    if kind == "perceptron" and num_classes < 2:
        raise bad(f"a perceptron needs at least 2 classes, its config says {num_classes}")

    classes = data["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        raise bad(f"its class names are {type(classes).__name__} {classes!r}, not a list of names")
    if len(classes) != num_classes or len(set(classes)) != len(classes):
        raise bad(f"it names {len(classes)} classes ({', '.join(classes)}) for a {num_classes}-class model")
    image_size = data["image_size"]
    if not _int(image_size) or image_size < 0:
        raise bad(f"its image size {image_size!r} is not a number of pixels (or 0 for 2-D points)")
    if image_size == 0 and in_features != PLANAR_FEATURES:  # a 2-D dataset's points (x₁, x₂)
        raise bad(f"its image size 0 means 2-D points, {PLANAR_FEATURES} inputs, but its model takes {in_features}")
    if image_size > 0 and 3 * image_size * image_size != in_features:
        raise bad(f"its image size {image_size!r} does not give the model's {in_features} inputs (3 x size x size)")
    dataset = _saved_dataset(data)
    if dataset is not None and (dataset in PLANAR_DATASETS) != (image_size == 0):
        raise bad(f"it was trained on {dataset} data, which image size {image_size} does not describe")
    std = data["standardizer"]
    if not (isinstance(std, dict) and set(std) == {"mean", "std"}):
        raise bad("its standardizer is not a dict of mean and std")
    for key in ("mean", "std"):
        tensor = std[key]
        if not (
            isinstance(tensor, torch.Tensor)
            and tensor.is_floating_point()
            and tensor.shape == (in_features,)
            and _dense(tensor)
        ):
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise bad(f"its standardizer {key} is {shape}, not {in_features} floating-point numbers")
    if "whitener" in data:
        _check_whitener(data["whitener"], in_features, bad)
    if "config" in data and not isinstance(data["config"], dict):
        raise bad("its run config is not a dict")


def _check_whitener(whitener: Any, in_features: int, bad: Any) -> None:
    """A whitener (``--whiten zca``): a (D, k) basis, k gains and a positive scale, D the model's inputs."""
    if not (isinstance(whitener, dict) and set(whitener) == {"basis", "gains", "scale"}):
        raise bad("its whitener is not a dict of basis, gains and scale")
    if not all(isinstance(t, torch.Tensor) and t.is_floating_point() and _dense(t) for t in whitener.values()):
        raise bad("its whitener holds something other than stored floating-point tensors")
    basis, gains, scale = whitener["basis"], whitener["gains"], whitener["scale"]
    if basis.dim() != 2 or basis.shape[0] != in_features or not 1 <= basis.shape[1] <= in_features:
        raise bad(f"its whitener basis is {tuple(basis.shape)}, not ({in_features}, k) with 1 ≤ k ≤ {in_features}")
    if gains.shape != basis.shape[1:]:
        raise bad(f"its whitener has {tuple(gains.shape)} gains for {basis.shape[1]} directions")
    if scale.dim() != 0 or not (math.isfinite(float(scale)) and float(scale) > 0):
        raise bad("its whitener scale is not one positive number")


def _saved_dataset(data: dict[str, Any]) -> str | None:
    """The dataset name in the checkpoint's run config, if it has one (lone ``predict`` checkpoints may not)."""
    config = data.get("config")
    options = config.get("data") if isinstance(config, dict) else None
    dataset = options.get("dataset") if isinstance(options, dict) else None
    return dataset if isinstance(dataset, str) else None


_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    """Raise ``TypeError`` naming the first value that ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(value, torch.Tensor) or isinstance(value, _PLAIN):
        return
    if isinstance(value, (dict, OrderedDict)):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; use str or int")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}; a checkpoint holds only tensors and plain types")


def _what_went_wrong(head: bytes, err: Exception) -> str:
    """Why ``torch.load`` failed, judged from the file's first bytes."""
    if not head:
        return "the file is empty"
    if head.startswith(b"PK"):  # torch.save writes a zip archive
        return "it is truncated or damaged (an interrupted copy?); use another checkpoint, e.g. last.pt or best.pt"
    return f"it is not a PyTorch checkpoint file ({type(err).__name__})"
