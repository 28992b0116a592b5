"""The lecture's pictures as matplotlib Figures: the activation functions, and decision boundaries in the plane.

* :func:`activation_figure`: step, sigmoid, tanh and ReLU over ``a ∈ [−5, 5]``, and below each its
  derivative, computed by our own Functions' backward (``torch.autograd.grad`` through
  :mod:`mlp_torch.functional`), so the curve drawn is the derivative the code trains with.
* :func:`decision_boundary_figure`: a 2-D classifier's predicted class over a grid covering the
  data, each class in a light tint of its colour, the training points on top in the full colour,
  and for a sigmoid output the line ``ŷ = σ(p) = 0.5`` with the 0.1 and 0.9 levels dashed;
  :func:`decision_boundary_strip` puts several side by side (one run at a few epochs), and
  :func:`draw_decision_boundary` draws one on any matplotlib ``Axes``.

Both return a :class:`matplotlib.figure.Figure` on an Agg canvas (no pyplot, no display, no global
state), so ``fig.savefig("x.png")`` and TensorBoard's ``SummaryWriter.add_figure`` both take it.
:func:`figure_pixels` draws one once into an RGB array, for TensorBoard's ``add_image`` and a PNG
file alike (:func:`png_bytes`), without drawing it twice or importing pyplot as ``add_figure`` does.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import numpy as np
import torch
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, hsv_to_rgb, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor

from .. import functional as MF
from ..data import Preprocessor
from ..models import Classifier

__all__ = [
    "activation_figure",
    "class_colours",
    "decision_boundary_figure",
    "decision_boundary_strip",
    "draw_decision_boundary",
    "describe_model",
    "figure_pixels",
    "png_bytes",
    "predict_grid",
]

TAB10 = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
REGION_TINT = 0.3  # a region's colour: this much of its class colour, the rest white
GRID = 300  # grid points a side: about one per pixel of a figure saved at 100 dpi
MARGIN = 0.1  # the grid extends this fraction of the data's span beyond it on every side
EVAL_CHUNK = 65536  # grid points per forward pass
# the sigmoid output's contours: (ŷ, line style, width); 0.5 is the decision boundary
PROBABILITY_LEVELS: tuple[tuple[float, Literal["-", "--"], float], ...] = (
    (0.1, "--", 1.0),
    (0.5, "-", 2.0),
    (0.9, "--", 1.0),
)


def class_colours(num_classes: int) -> tuple[list[tuple[float, float, float]], list[tuple[float, float, float]]]:
    """``(point colours, region colours)`` per class, as RGB in [0, 1]: tab10 and a light tint of it.

    Args:
        num_classes: how many classes; beyond 10, colours are spread around the HSV circle.
    """
    if num_classes <= len(TAB10):
        points = [to_rgb(c) for c in TAB10[:num_classes]]
    else:
        points = [_rgb(hsv_to_rgb((k / num_classes, 0.75, 0.85))) for k in range(num_classes)]
    regions = [_rgb([REGION_TINT * c + (1 - REGION_TINT) for c in rgb]) for rgb in points]
    return points, regions


def _rgb(values: Iterable[float]) -> tuple[float, float, float]:
    red, green, blue = (float(v) for v in values)
    return red, green, blue


def figure_pixels(fig: Figure) -> np.ndarray:
    """The figure drawn at its own dpi, as ``savefig`` draws it: uint8 RGB (H, W, 3)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # H,W,3 (the figure's background is opaque)


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 RGB (H, W, 3) pixels as a PNG file's bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="png")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Activation functions and their derivatives
# --------------------------------------------------------------------------------------------

ACTIVATION_PANELS: tuple[tuple[str, Callable[[Tensor], Tensor], str, str], ...] = (
    ("Step (Rosenblatt)", MF.step, "f(a) = 1[a > 0]", "f'(a) = 0  (undefined at 0)"),
    ("Sigmoid", MF.sigmoid, "σ(a) = 1 / (1 + e⁻ᵃ)", "σ'(a) = σ(a)(1 − σ(a))"),
    ("Tanh", MF.tanh, "tanh(a)", "tanh'(a) = 1 − tanh²(a)"),
    ("ReLU", MF.relu, "relu(a) = max(0, a)", "relu'(a) = 1[a > 0]"),
)


def activation_derivatives(a: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """``{name: (h, dh/da)}`` for each panel, ``dh/da`` from our Function's backward."""
    out = {}
    for name, fn, _, _ in ACTIVATION_PANELS:
        leaf = a.detach().clone().requires_grad_()
        h = fn(leaf)
        (dh,) = torch.autograd.grad(h.sum(), leaf, allow_unused=True)  # Σ_n h_n: its gradient is f'(a_n)
        out[name] = (h.detach(), torch.zeros_like(leaf) if dh is None else dh)
    return out


def activation_figure(low: float = -5.0, high: float = 5.0, points: int = 1001) -> Figure:
    """Step, sigmoid, tanh and ReLU (top row) and their derivatives (bottom row), as our code computes them.

    Args:
        low: left end of the ``a`` axis.
        high: right end.
        points: samples along it.
    """
    a = torch.linspace(low, high, points, dtype=torch.float64)
    curves = activation_derivatives(a)
    fig = Figure(figsize=(13, 6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(ACTIVATION_PANELS), sharex=True)
    for col, (name, _, formula, derivative) in enumerate(ACTIVATION_PANELS):
        h, dh = curves[name]
        top, bottom = axes[0, col], axes[1, col]
        top.plot(a.numpy(), h.numpy(), color=TAB10[0], linewidth=2)
        bottom.plot(a.numpy(), dh.numpy(), color=TAB10[3], linewidth=2)
        top.set_title(f"{name}\n{formula}", fontsize=11)
        bottom.set_title(derivative, fontsize=11)
        bottom.set_xlabel("a")
        for ax in (top, bottom):
            ax.axhline(0, color="0.6", linewidth=0.8, zorder=0)
            ax.axvline(0, color="0.6", linewidth=0.8, zorder=0)
            ax.grid(True, color="0.9")
            ax.set_xlim(low, high)
        # the same vertical scale for the bounded ones, so σ' (≤ 1/4) and tanh' (≤ 1) compare at a glance
        if name != "ReLU":
            top.set_ylim(-1.15, 1.15)
            bottom.set_ylim(-0.1, 1.1)
        else:
            bottom.set_ylim(-0.1, 1.1)
    axes[0, 0].set_ylabel("h = f(a)")
    axes[1, 0].set_ylabel("dh/da  (our backward)")
    fig.suptitle("Activation functions (top) and the derivatives backward uses (bottom)", fontsize=13)
    return fig


# --------------------------------------------------------------------------------------------
# Decision boundaries in the plane
# --------------------------------------------------------------------------------------------


def describe_model(model: Classifier) -> str:
    """A short title: ``MLP 2-4-1 (tanh, sigmoid output)``, ``linear softmax 2-3``, ``perceptron 2-1``."""
    sizes = [model.layers[0].weight.shape[1], *(layer.weight.shape[0] for layer in model.layers)]
    shape = "-".join(map(str, sizes))
    output = getattr(model, "output", "softmax")
    if model.kind == "perceptron":
        return f"perceptron {shape}"
    if model.kind == "softmax":
        return f"logistic regression {shape}" if output == "sigmoid" else f"linear softmax {shape}"
    activation = getattr(model, "activation", "")
    return f"MLP {shape} ({activation}{', sigmoid output' if output == 'sigmoid' else ''})"


def grid_limits(x: Tensor, margin: float = MARGIN) -> tuple[tuple[float, float], tuple[float, float]]:
    """A square window around the points ``x`` (N, 2): centred on them, ``margin`` of their span beyond."""
    low, high = x.min(dim=0).values.double(), x.max(dim=0).values.double()
    centre, half = (low + high) / 2, float((high - low).max()) / 2 * (1 + 2 * margin)
    half = max(half, 1e-3)  # a single point still gets a window
    cx, cy = centre.tolist()
    return (cx - half, cx + half), (cy - half, cy + half)


def predict_grid(
    model: Classifier,
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    grid: int = GRID,
    standardizer: Preprocessor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The model's predictions on a ``grid`` x ``grid`` lattice over ``xlim`` x ``ylim``.

    Args:
        model: any classifier taking 2 features, any backend.
        xlim: ``(left, right)`` in the data's units (before standardisation).
        ylim: ``(bottom, top)``.
        grid: points a side.
        standardizer: applied to the grid points before the model, as to its training data.

    Returns:
        ``(xs (G,), ys (G,), predicted class (G, G) int64, ŷ = P(class 1) (G, G) or None)``, on the
        CPU, row ``i`` of the images at height ``ys[i]``; the probability is given for a sigmoid output.
    """
    xs = torch.linspace(*xlim, grid, dtype=torch.float64)
    ys = torch.linspace(*ylim, grid, dtype=torch.float64)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")  # G,G
    points = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1).to(torch.float32)  # G²,2
    logits = _logits(model, points, standardizer)  # G²,C
    classes = logits.argmax(dim=1).reshape(grid, grid)
    sigmoid = getattr(model, "output", "softmax") == "sigmoid"
    probability = torch.sigmoid(logits[:, 1].double()).reshape(grid, grid) if sigmoid else None
    return xs, ys, classes, probability


def _logits(model: Classifier, points: Tensor, standardizer: Preprocessor | None) -> Tensor:
    """``model(points)`` in chunks, without autograd, on the model's device and dtype; CPU result."""
    parameter = next(model.parameters())
    out = []
    with torch.no_grad():
        for chunk in points.split(EVAL_CHUNK):
            inputs = standardizer(chunk.to(standardizer.mean.device)) if standardizer is not None else chunk
            out.append(model(inputs.to(parameter.device, parameter.dtype)).float().cpu())
    return torch.cat(out)


def decision_boundary_figure(
    model: Classifier,
    x_train: Tensor,
    y_train: Tensor,
    class_names: Sequence[str],
    standardizer: Preprocessor | None = None,
    grid: int = GRID,
    title: str | None = None,
) -> Figure:
    """The predicted class over the plane, the training points on top; for a sigmoid output the line ŷ = 0.5.

    Args:
        model: a classifier of 2 inputs (softmax, perceptron or MLP, any backend, any device).
        x_train: the training points (N, 2) in the data's own units, before standardisation.
        y_train: their labels (N,).
        class_names: one name per class, for the legend.
        standardizer: the one the model was trained with (``None``: the model takes raw points).
        grid: grid points a side.
        title: a second title line, e.g. ``"epoch 40"``; the first names the model and its
            accuracy on the points drawn.

    Raises:
        ValueError: the points are not (N, 2), or labels and names do not match them.
    """
    fig = Figure(figsize=(7.2, 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    handles, accuracy = draw_decision_boundary(ax, model, x_train, y_train, class_names, standardizer, grid)
    heading = f"{describe_model(model)}: accuracy {100 * accuracy:.1f} % on these {len(x_train)} points"
    ax.set_title(heading if title is None else f"{heading}\n{title}", fontsize=11)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)
    return fig


def decision_boundary_strip(
    models: Sequence[Classifier],
    titles: Sequence[str],
    x_train: Tensor,
    y_train: Tensor,
    class_names: Sequence[str],
    standardizer: Preprocessor | None = None,
    grid: int = GRID,
) -> Figure:
    """Several models' decision boundaries side by side, e.g. one run's at a few epochs, with one legend.

    Args:
        models: the classifiers, one panel each, left to right (2 inputs each).
        titles: one per panel, e.g. ``"epoch 5"``; each panel adds its accuracy on the points.
        x_train: the points drawn in every panel (N, 2), before standardisation.
        y_train: their labels (N,).
        class_names: one name per class.
        standardizer: the one the models were trained with.
        grid: grid points a side, per panel.
    """
    if len(models) != len(titles) or not models:
        raise ValueError(f"need one title per model, and some models; got {len(titles)} and {len(models)}")
    fig = Figure(figsize=(3.2 * len(models) + 1.6, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    handles: list[Line2D] = []
    for ax, model, title in zip(axes, models, titles):
        handles, accuracy = draw_decision_boundary(ax, model, x_train, y_train, class_names, standardizer, grid)
        ax.set_title(f"{title}: {100 * accuracy:.1f} %", fontsize=11)
        ax.tick_params(labelsize=8)
    fig.suptitle(f"{describe_model(models[-1])}, accuracy on the {len(x_train)} points drawn", fontsize=12)
    axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.04, 1.0), borderaxespad=0, frameon=False)
    return fig


def draw_decision_boundary(
    ax: Axes,
    model: Classifier,
    x_train: Tensor,
    y_train: Tensor,
    class_names: Sequence[str],
    standardizer: Preprocessor | None = None,
    grid: int = GRID,
) -> tuple[list[Line2D], float]:
    """Draw the predicted class regions, the points and (sigmoid output) the ŷ contours on ``ax``.

    Returns:
        the legend handles (classes with their point counts, then the contours drawn) and the
        model's accuracy on the points.

    Raises:
        ValueError: the points are not (N, 2), or labels and names do not match them.
    """
    if grid < 2:
        raise ValueError(f"the grid needs at least 2 points a side, got {grid}")
    if x_train.dim() != 2 or x_train.shape[1] != 2:
        raise ValueError(f"decision boundaries are drawn for 2-D points (N, 2); got {tuple(x_train.shape)}")
    if len(y_train) != len(x_train) or len(x_train) == 0:
        raise ValueError(f"need as many labels as points, and some points; got {len(y_train)} and {len(x_train)}")
    num_classes = len(class_names)
    x_cpu, y_cpu = x_train.detach().float().cpu(), y_train.detach().long().cpu()
    if int(y_cpu.max()) >= num_classes:
        raise ValueError(f"a label {int(y_cpu.max())} has no name among {num_classes} class names")
    xlim, ylim = grid_limits(x_cpu)
    xs, ys, classes, probability = predict_grid(model, xlim, ylim, grid, standardizer)
    point_colours, region_colours = class_colours(num_classes)

    dx, dy = float(xs[1] - xs[0]) / 2, float(ys[1] - ys[0]) / 2  # each grid point at its pixel's centre
    ax.imshow(
        classes.numpy(),
        origin="lower",
        extent=(xlim[0] - dx, xlim[1] + dx, ylim[0] - dy, ylim[1] + dy),
        cmap=ListedColormap(region_colours),
        vmin=-0.5,
        vmax=num_classes - 0.5,
        interpolation="nearest",
        aspect="equal",
    )
    handles: list[Line2D] = []
    for c, name in enumerate(class_names):
        mine = y_cpu == c
        ax.scatter(x_cpu[mine, 0], x_cpu[mine, 1], s=16, color=point_colours[c], edgecolors="0.15", linewidths=0.5)
        handles.append(
            Line2D([], [], linestyle="", marker="o", markersize=6, markerfacecolor=point_colours[c],
                   markeredgecolor="0.15", label=f"{name} ({int(mine.sum())})")
        )  # fmt: skip
    if probability is not None:
        handles += _probability_contours(ax, xs, ys, probability)
    predicted = _logits(model, x_cpu, standardizer).argmax(dim=1)
    accuracy = (predicted == y_cpu).double().mean().item()
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")
    return handles, accuracy


def _probability_contours(ax: Axes, xs: Tensor, ys: Tensor, probability: Tensor) -> list[Line2D]:
    """Draw ŷ = 0.5 (solid) and ŷ = 0.1, 0.9 (dashed) where the grid crosses them; legend handles."""
    handles = []
    for level, style, width in PROBABILITY_LEVELS:
        if not float(probability.min()) < level < float(probability.max()):
            continue  # the level is nowhere on the grid: nothing to draw
        lines = ax.contour(xs, ys, probability, levels=[level], colors="black", linestyles=style, linewidths=width)
        # an id in SVG output; before matplotlib 3.8 the contour set held one collection per level
        for artist in [lines] if isinstance(lines, Artist) else lines.collections:
            artist.set_gid(f"probability-{level:g}")
        handles.append(Line2D([], [], color="black", linestyle=style, linewidth=width, label=f"ŷ = σ(p) = {level:g}"))
    return handles
