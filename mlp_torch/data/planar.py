"""Points in the plane, for the lecture's pictures: ``linear``, ``xor``, ``circles`` and ``spiral``.

Each dataset is float32 points ``x ∈ ℝ²`` (N, 2) with int64 labels (N,), generated in torch from
one seed in well under a second, with every class the same size (±1). The shapes, drawn in a box
of about [−1.5, 1.5]²:

- ``linear``: two Gaussian blobs either side of the line ``LINEAR_NORMAL · x = 0`` (class 1 where it
  is positive), truncated so that no point comes nearer the line than ``LINEAR_MARGIN``: linearly
  separable with margin γ = ``LINEAR_MARGIN``, Rosenblatt's case.
- ``xor``: points uniform in the four quadrants of [−1, 1]², kept ``XOR_GAP`` away from the axes;
  class 0 where ``x₁ x₂ > 0``, class 1 where ``x₁ x₂ < 0`` (TensorFlow Playground's XOR). No line
  gets more than three quadrants right.
- ``circles``: class 0 on the circle of radius 1, class 1 on the circle of radius 1/2 inside it.
- ``spiral``: ``arms`` classes, one spiral arm each (CS231n's case study): radius r ∈ [0, 1] and
  angle ``SPIRAL_SWEEP · r + 2π k / arms`` for arm k.

``noise`` is the standard deviation of Gaussian jitter added to each coordinate (sklearn's
``make_circles`` convention), in the units of the box above. Two shapes adapt it: on ``spiral`` it
is scaled by the radius, as an angle would be (the arms meet at the centre, where a fixed jitter
would make the classes indistinguishable); on ``linear`` it widens the blobs, and points it would
carry into the margin are drawn again (the blobs are truncated), so the classes stay separable.
"""

from __future__ import annotations

import math

import torch

from .splits import RawSplits, Split

PLANAR_DATASETS = ("linear", "xor", "circles", "spiral")
PLANAR_FEATURES = 2  # a point is (x₁, x₂): the models' in_features on these datasets
LINEAR_NORMAL = (0.5, math.sqrt(3) / 2)  # the separating line's unit normal: 60° from the x₁ axis
LINEAR_MARGIN = 0.15  # no point of `linear` is nearer the line than this
LINEAR_CENTRE = 0.75  # the blobs' centres are ±LINEAR_CENTRE · LINEAR_NORMAL
LINEAR_SPREAD = 0.3  # the blobs' std before noise
XOR_GAP = 0.1  # xor points keep this far from the axes (before noise)
CIRCLE_RADII = (1.0, 0.5)  # class 0 outside, class 1 inside
SPIRAL_SWEEP = 4.0  # radians an arm turns from the centre to radius 1 (CS231n)


def planar_num_classes(name: str, arms: int = 3) -> int:
    """How many classes the dataset ``name`` has: ``arms`` for ``spiral``, 2 for the others."""
    return arms if name == "spiral" else 2


def planar_classes(name: str, arms: int = 3) -> list[str]:
    """Default class names: ``arm0 … arm{arms−1}`` for the spiral, ``class0, class1`` otherwise."""
    if name == "spiral":
        return [f"arm{k}" for k in range(arms)]
    return ["class0", "class1"]


def make_planar(name: str, samples: int, noise: float, arms: int = 3, seed: int = 0) -> RawSplits:
    """Generate the train and test splits: float32 points (N, 2), int64 labels (N,); same seed, same points.

    Args:
        name: ``linear``, ``xor``, ``circles`` or ``spiral``.
        samples: points in each of train and test (validation is carved from train later).
        noise: the Gaussian jitter's standard deviation (see the module docstring).
        arms: the spiral's arms, i.e. its classes; the other datasets ignore it.
        seed: the generator seed; the points depend on nothing else.
    """
    if name not in PLANAR_DATASETS:
        raise ValueError(f"unknown 2-D dataset {name!r}; use one of {', '.join(PLANAR_DATASETS)}")
    g = torch.Generator().manual_seed(seed)
    num_classes = planar_num_classes(name, arms)
    splits = []
    for _ in ("train", "test"):
        y = _balanced_labels(samples, num_classes)
        x = _POINTS[name](y, noise, num_classes, g)
        order = torch.randperm(samples, generator=g)
        splits.append(Split(x[order].to(torch.float32), y[order]))
    train, test = splits
    return RawSplits(train, test)


def _balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """``n`` labels, sorted, each class ``n // C`` or ``n // C + 1`` times."""
    return torch.arange(n) * num_classes // n  # N


def _jitter(x: torch.Tensor, std: float | torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x + std * torch.randn(x.shape, generator=g, dtype=torch.float64)


def _linear(y: torch.Tensor, noise: float, num_classes: int, g: torch.Generator) -> torch.Tensor:
    n = len(y)
    spread = math.hypot(LINEAR_SPREAD, noise)  # a Gaussian blob plus Gaussian jitter is a wider Gaussian
    # Distance u from the line: N(LINEAR_CENTRE, spread²) truncated to u ≥ LINEAR_MARGIN, drawn by
    # inverting the CDF Φ on its upper tail: u = μ − s Φ⁻¹(q) with q uniform in (0, Φ(−a)],
    # a = (LINEAR_MARGIN − μ) / s. No point is redrawn in a loop and none enters the margin.
    tail = torch.special.ndtr(torch.tensor((LINEAR_CENTRE - LINEAR_MARGIN) / spread, dtype=torch.float64))
    q = tail * (1 - torch.rand(n, generator=g, dtype=torch.float64))  # (0, Φ(−a)], N
    u = (LINEAR_CENTRE - spread * torch.special.ndtri(q)).clamp_min(LINEAR_MARGIN)  # ≥ γ (clamp: rounding), N
    v = spread * torch.randn(n, generator=g, dtype=torch.float64)  # along the line, N
    normal = torch.tensor(LINEAR_NORMAL, dtype=torch.float64)  # 2
    along = torch.stack([-normal[1], normal[0]])  # the line's direction, 2
    side = 2.0 * y.to(torch.float64) - 1.0  # class 1 on the positive side, N
    return (side * u)[:, None] * normal + v[:, None] * along  # N,2


def _xor(y: torch.Tensor, noise: float, num_classes: int, g: torch.Generator) -> torch.Tensor:
    n = len(y)
    # Quadrants in turn, so each of the four holds n/4 points (±1): the best line gets 3/4 right.
    first = torch.arange(n) % 2 * 2 - 1  # ±1: which of the class's two quadrants, N
    second = torch.where(y == 0, first, -first)  # class 0: x₁ x₂ > 0, class 1: x₁ x₂ < 0, N
    signs = torch.stack([first, second], dim=1).to(torch.float64)  # N,2
    magnitude = XOR_GAP + (1 - XOR_GAP) * torch.rand(n, 2, generator=g, dtype=torch.float64)  # N,2
    return _jitter(signs * magnitude, noise, g)  # N,2


def _circles(y: torch.Tensor, noise: float, num_classes: int, g: torch.Generator) -> torch.Tensor:
    angle = 2 * math.pi * torch.rand(len(y), generator=g, dtype=torch.float64)  # N
    radius = torch.tensor(CIRCLE_RADII, dtype=torch.float64)[y]  # N
    return _jitter(radius[:, None] * torch.stack([angle.cos(), angle.sin()], dim=1), noise, g)  # N,2


def _spiral(y: torch.Tensor, noise: float, num_classes: int, g: torch.Generator) -> torch.Tensor:
    radius = torch.rand(len(y), generator=g, dtype=torch.float64)  # N
    angle = SPIRAL_SWEEP * radius + 2 * math.pi * y.to(torch.float64) / num_classes  # N
    points = radius[:, None] * torch.stack([angle.cos(), angle.sin()], dim=1)  # N,2
    return _jitter(points, noise * radius[:, None], g)  # N,2


_POINTS = {"linear": _linear, "xor": _xor, "circles": _circles, "spiral": _spiral}
