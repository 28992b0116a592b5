"""The pictures TensorBoard shows of a training run: learned templates, the confusion matrix, gradients by layer.

* :func:`templates_image`: the first layer's rows as images, as the lecture draws a linear
  classifier's templates, but of what training changed, ``W − W_init``. The initial weights are
  Xavier noise about as large as what a few epochs add (the change is 11–40 % of them on cat/dog),
  so ``W`` itself shows the initialisation. A linear model gets one tile per class, with its
  name; an MLP the hidden units whose weights changed most, in a padded grid.
* :func:`confusion_figure`: class names on both axes, the count and the row percentage (the
  recall of the true class) in every cell.
* :func:`gradient_norms_figure`: each layer's mean ``‖∂ℓ/∂θ‖`` on one log axis, one line per
  epoch: the vanishing gradient of a deep sigmoid net is a line falling towards the input.

Figures are drawn on an Agg canvas (no pyplot, no display) and turned into ``(3, H, W)`` uint8
tensors by :func:`figure_to_image`, which ``SummaryWriter.add_image`` takes as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
from torch import Tensor

__all__ = [
    "MAX_UNITS",
    "confusion_figure",
    "figure_to_image",
    "gradient_norms_figure",
    "labelled_tiles_figure",
    "templates_image",
    "tiles",
]

MAX_UNITS = 64  # hidden units shown (a 512-unit layer would be unreadable); 8 rows of 8
TILE_PIXELS = 64  # a template is enlarged (nearest neighbour) to about this many pixels a side
TILE_GAP = 6  # white pixels between templates
LABELLED_TILE_PIXELS = 96  # a linear model's few templates are drawn larger
CELL_TEXT_MAX_CLASSES = 20  # beyond this, the confusion matrix's cells carry no numbers
DPI = 100


def figure_to_image(fig: Figure) -> Tensor:
    """The figure rendered as a ``(3, H, W)`` uint8 tensor (Agg, ``DPI`` dots per inch)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())  # H,W,4
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1)  # 3,H,W


# --------------------------------------------------------------------------------------------
# Templates: W − W_init of the first layer
# --------------------------------------------------------------------------------------------


def tiles(rows: Tensor, image_size: int) -> Tensor:
    """Rows ``(K, 3·S·S)`` as colour images ``(K, 3, S, S)``, each min-max scaled to [0, 1] on its own."""
    images = rows.detach().float().cpu().reshape(-1, 3, image_size, image_size)
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - low) / (high - low).clamp_min(1e-12)


def templates_image(weight: Tensor, initial: Tensor, image_size: int, class_names: Sequence[str]) -> Tensor | None:
    """The first layer's learned change ``W − W_init`` as images: ``(3, H, W)`` uint8, or ``None``.

    A layer with one row per class (a linear model) gives one labelled tile per class; a binary
    model's single row is labelled with both classes (it points towards the second). Any other
    first layer (an MLP's) gives its :data:`MAX_UNITS` hidden units of largest ``‖ΔW_i‖``, largest
    first, 8 to a row. ``None`` when the inputs are not ``3 × image_size²`` pixels (2-D points).

    Args:
        weight: the first layer's weight (units, inputs), any device.
        initial: the same layer's initial weight.
        image_size: the side of the input images.
        class_names: the classes, for a linear model's labels.
    """
    if weight.shape[1] != 3 * image_size * image_size:
        return None
    delta = weight.detach().float().cpu() - initial.detach().float().cpu()
    if weight.shape[0] == len(class_names):
        return figure_to_image(labelled_tiles_figure(tiles(delta, image_size), list(class_names)))
    if weight.shape[0] == 1 and len(class_names) == 2:
        return figure_to_image(
            labelled_tiles_figure(tiles(delta, image_size), [f"{class_names[1]} − {class_names[0]}"])
        )
    from torchvision.utils import make_grid  # imported on first use: torchvision is slow to import

    order = delta.norm(dim=1).argsort(descending=True)[:MAX_UNITS]
    images = tiles(delta[order], image_size)
    scale = max(1, TILE_PIXELS // image_size)
    images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)  # K,3,S·scale,S·scale
    grid = make_grid(images, nrow=8, padding=TILE_GAP, pad_value=1.0)  # white gaps between tiles
    return (grid * 255).round().to(torch.uint8)


def labelled_tiles_figure(images: Tensor, labels: list[str]) -> Figure:
    """One tile per image, its label above it, up to 10 to a row; drawn pixel for pixel (one image, no resampling)."""
    count, size = len(images), images.shape[-1]
    scale = max(1, LABELLED_TILE_PIXELS // size)
    tile, gap, band, top = size * scale, 16, 24, 30  # pixels: tile side, between tiles, label band, title
    columns = min(count, 10)
    rows = math.ceil(count / columns)
    width, height = max(columns * (tile + gap) + gap, 300), top + rows * (band + tile) + gap
    margin = (width - columns * (tile + gap) - gap) // 2  # centres the tiles under a title wider than them
    canvas = torch.ones(height, width, 3)
    big = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3).permute(0, 2, 3, 1)  # K,T,T,3
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    for k in range(count):
        left, label_top = margin + gap + (k % columns) * (tile + gap), top + (k // columns) * (band + tile)
        canvas[label_top + band : label_top + band + tile, left : left + tile] = big[k]
        ax.text(left + tile / 2, label_top + band - 5, labels[k], ha="center", va="bottom", fontsize=11)
    ax.imshow(canvas.numpy(), interpolation="nearest", extent=(0, width, height, 0))
    ax.text(width / 2, 8, "W − W_init, each tile min-max scaled", ha="center", va="top", fontsize=10)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    return fig


# --------------------------------------------------------------------------------------------
# The confusion matrix
# --------------------------------------------------------------------------------------------


def confusion_figure(confusion: Sequence[Sequence[int]] | Tensor, class_names: Sequence[str], title: str) -> Figure:
    """The confusion matrix, true class down, predicted across, shaded by the row share.

    Each cell holds its count and the share of its row (for the diagonal, the class's recall);
    up to :data:`CELL_TEXT_MAX_CLASSES` classes, beyond that only the shading.

    Args:
        confusion: ``(C, C)`` counts, ``[true][predicted]``.
        class_names: the C class names.
        title: the figure's title, e.g. ``"validation, epoch 3\naccuracy 61.2 %"``.
    """
    counts = torch.as_tensor(confusion, dtype=torch.float64).cpu()
    num_classes = len(class_names)
    if counts.shape != (num_classes, num_classes):
        raise ValueError(f"a confusion matrix of {num_classes} classes is {num_classes}×{num_classes}")
    share = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)  # C,C: each row sums to 1 (or 0)
    side = min(max(4.5, 1.5 + 0.55 * num_classes), 14.0)  # inches: ≥ 450 px for two classes
    names = [str(c) for c in class_names]
    rotate = num_classes > 4
    label_inches = 0.35 + 0.075 * max(len(c) for c in names)  # room for the longest class name
    width, height = side + label_inches, side + (label_inches if rotate else 0.3)
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    left, bottom = (label_inches + 0.25) / width, (height - side + 0.3) / height
    fig.subplots_adjust(left=left, right=1 - 0.15 / width, bottom=bottom, top=1 - 0.6 / height)
    ax.imshow(share.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    if num_classes <= CELL_TEXT_MAX_CLASSES:
        size = 10 if num_classes <= 6 else 8
        for t in range(num_classes):
            for p in range(num_classes):
                text = f"{int(counts[t, p])}\n{100 * share[t, p]:.0f} %"
                colour = "white" if share[t, p] > 0.55 else "black"
                ax.text(p, t, text, ha="center", va="center", fontsize=size, color=colour)
    ticks = list(range(num_classes))
    ax.set_xticks(ticks, names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# Gradient norms by layer
# --------------------------------------------------------------------------------------------


def gradient_norms_figure(norms_by_epoch: Sequence[Sequence[float]], first_epoch: int = 1) -> Figure:
    """Each layer's mean ``‖∂ℓ/∂θ‖`` on a log axis, one line per epoch, the latest in bold with its values.

    Args:
        norms_by_epoch: per epoch, the mean gradient norm of each layer (input side first).
        first_epoch: the number of the first epoch given.
    """
    norms = np.asarray(norms_by_epoch, dtype=np.float64)  # E,L
    epochs, layers = norms.shape
    x = np.arange(layers)
    fig = Figure(figsize=(7.0, 4.4), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.15, top=0.9)
    colours = _blues(epochs)
    for e in range(epochs - 1):
        label = f"epoch {first_epoch + e}" if e == 0 else None
        ax.plot(x, norms[e], color=colours[e], linewidth=1.0, marker="o", markersize=3, label=label)
    last = norms[-1]
    latest = f"epoch {first_epoch + epochs - 1}"
    ax.plot(x, last, color="#08306b", linewidth=2.2, marker="o", markersize=6, label=latest)
    for i, value in enumerate(last):
        ax.annotate(f"{value:.2g}", (i, value), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=9)
    ax.set_yscale("log")
    # written plainly (mathtext labels and minor ticks are most of a log axis's drawing time); 1-2-5
    # steps where the values span less than two decades, else decades
    positive = norms[norms > 0]
    decades = math.log10(positive.max() / positive.min()) if positive.size else 0.0
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 2 else (1.0,), numticks=12))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_xticks(x, [_layer_label(i, layers) for i in range(layers)])
    ax.set_ylabel("mean ‖∂ℓ/∂θ‖ over the epoch's steps")
    ax.grid(True, color="0.92")
    ratio = last[0] / last[-1] if last[-1] > 0 else float("nan")
    ax.set_title(f"gradient norm by layer: layer 0 / layer {layers - 1} = {ratio:.2g}", fontsize=11)
    ax.legend(loc="best", fontsize=9, frameon=False)
    return fig


def _layer_label(i: int, layers: int) -> str:
    if layers > 1 and i == 0:
        return "0\n(input)"
    return f"{i}\n(output)" if i == layers - 1 else str(i)


def _blues(count: int) -> list[tuple[float, float, float]]:
    """``count`` colours from pale to dark blue, for the epochs in order."""
    pale, dark = np.array([0.78, 0.86, 0.94]), np.array([0.13, 0.44, 0.71])
    return [tuple(pale + (dark - pale) * k / max(count - 1, 1)) for k in range(count)]
