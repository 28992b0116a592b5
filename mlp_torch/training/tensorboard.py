"""What a run writes for TensorBoard, all into the run's own directory (one event file).

Scalars (x axis: epoch, except ``grad_check/*``, which uses the global step):

    loss/train  loss/val  accuracy/train  accuracy/val  accuracy/val_balanced  lr
    grad_norm/layer{i}  weight_norm/layer{i}       ‖∂ℓ/∂θ‖ and ‖θ‖ per layer: a deep sigmoid
                                                    net's vanishing gradient shows here
    grad_check/max_rel_error                         with --check-grads-every: the backend vs builtin
    grad_check/max_abs_error  grad_check/scaled_error  (scaled: max|a−b| / max|b|, the float32 measure)

Histograms: ``weights/layer{i}``, ``gradients/layer{i}``, ``activations/hidden{i}`` (sigmoid
saturation piles up at 0 and 1). Images: ``weights/templates`` (the linear classifier's rows, or
the first layer's, as 32×32 colour templates, each min-max scaled) and ``confusion/val``.
Text: ``config``. At the end, ``add_hparams``-style summaries with the final metrics.

A write that fails (a full disk, a file-size limit) raises :class:`~mlp_torch.errors.WriteError`
naming the run's folder and the cause. TensorBoard writes from a background thread and re-raises
its error at the next call; that thread's own traceback is not printed.
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from ..errors import WriteError
from ..models import Classifier

MAX_TEMPLATES = 64  # first-layer rows shown as images (a 512-unit layer would be unreadable)
CELL = 24  # pixels per confusion-matrix cell

Method = TypeVar("Method", bound=Callable[..., Any])


def _writes(method: Method) -> Method:
    """Turn a failed write into one :class:`WriteError` that names the log's folder."""

    @functools.wraps(method)
    def guarded(self: RunLogger, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except OSError as err:
            raise WriteError(f"cannot write the TensorBoard log in {self.run_dir}: {err.strerror or err}") from None

    return guarded  # type: ignore[return-value]


class RunLogger:
    """A thin layer over ``SummaryWriter`` with the tags this project uses."""

    @_writes
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.closed = False
        _quiet_writer_threads()
        self.writer = SummaryWriter(log_dir=str(run_dir))

    @_writes
    def config(self, config: dict[str, Any]) -> None:
        self.writer.add_text("config", "```json\n" + json.dumps(config, indent=2) + "\n```", 0)

    @_writes
    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    @_writes
    def layer_norms(self, model: Classifier, grad_norms: list[float], epoch: int) -> None:
        """``grad_norm/layer{i}`` (averaged over the epoch's steps) and ``weight_norm/layer{i}``."""
        for i, layer in enumerate(model.layers):
            self.writer.add_scalar(f"grad_norm/layer{i}", grad_norms[i], epoch)
            self.writer.add_scalar(f"weight_norm/layer{i}", _layer_norm(list(layer.parameters())), epoch)

    @_writes
    def histograms(self, model: Classifier, hidden: list[Tensor], epoch: int) -> None:
        for i, layer in enumerate(model.layers):
            self.writer.add_histogram(f"weights/layer{i}", layer.weight.detach().float().cpu(), epoch)
            if layer.weight.grad is not None:
                self.writer.add_histogram(f"gradients/layer{i}", layer.weight.grad.detach().float().cpu(), epoch)
        for i, h in enumerate(hidden):
            self.writer.add_histogram(f"activations/hidden{i}", h.detach().float().cpu(), epoch)

    @_writes
    def templates(self, weight: Tensor, image_size: int, epoch: int) -> None:
        """Rows of the first weight matrix as colour images, each min-max scaled to [0, 1]."""
        rows = weight.detach().float().cpu()[:MAX_TEMPLATES]
        if rows.shape[1] != 3 * image_size * image_size:
            return
        images = rows.reshape(-1, 3, image_size, image_size)
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        high = images.amax(dim=(1, 2, 3), keepdim=True)
        images = (images - low) / (high - low).clamp_min(1e-12)
        self.writer.add_images("weights/templates", images, epoch)

    @_writes
    def confusion(self, cm: Tensor, epoch: int, tag: str = "confusion/val") -> None:
        """The confusion matrix, rows normalised (recall per true class), as a heat map."""
        self.writer.add_image(tag, confusion_image(cm), epoch)

    @_writes
    def grad_check(self, max_rel_error: float, step: int) -> None:
        self.writer.add_scalar("grad_check/max_rel_error", max_rel_error, step)

    @_writes
    def final(self, hparam_values: dict[str, Any], metrics: dict[str, float]) -> None:
        """Write the HPARAMS summaries into this run's own event file (not a stray sub-run)."""
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparam_values.items()}
        finite = {f"hparam/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        exp, ssi, sei = hparams(hp, finite)
        file_writer = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            file_writer.add_summary(summary)
        for tag, value in finite.items():
            self.writer.add_scalar(tag, value, 0)

    @_writes
    def close(self) -> None:
        """Flush and close the event file; safe to call again (also after a failure)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.writer.flush()
        finally:
            self.writer.close()


def _quiet_writer_threads() -> None:
    """Keep TensorBoard's writer thread from printing a traceback when a write fails.

    The thread stores its error and the main thread gets it from the next call, where
    :func:`_writes` turns it into one line; the thread's own report would be a second, raw one.
    """
    previous = threading.excepthook
    if getattr(previous, "quiet_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
            return
        previous(args)

    hook.quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def confusion_image(cm: Tensor) -> Tensor:
    """``(3, C·CELL, C·CELL)`` float image: white (0) to dark blue (1) by row-normalised count."""
    counts = cm.detach().cpu().to(torch.float32)
    share = counts / counts.sum(1, keepdim=True).clamp_min(1)  # C,C
    big = share.repeat_interleave(CELL, 0).repeat_interleave(CELL, 1)  # C*CELL, C*CELL
    blue = torch.tensor([0.03, 0.19, 0.42])[:, None, None]
    return 1 - big[None] * (1 - blue)  # 3, H, W


def _layer_norm(tensors: list[Tensor]) -> float:
    return math.sqrt(sum(float(t.detach().double().square().sum()) for t in tensors))
