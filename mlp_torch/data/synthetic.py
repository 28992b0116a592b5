"""Synthetic CIFAR-shaped data: seeded, generated in well under a second, learnable but not trivially.

Each image is drawn on a coarse 3x8x8 grid as ``nuisance + linear part + sign * xor part``,
upsampled to the image size, put on mid-grey with a little pixel noise and clipped to uint8:

- the *nuisance* is Gaussian in every coarse cell (like lighting, background, clutter): it is
  larger than the class signal, so the classes overlap and nothing is separable outright;
- the *linear part* is a class template: a linear classifier finds it (about 70 % on 3 classes);
- the *xor part* is a second class template times a random sign per image: its class mean is zero,
  so no linear function of the pixels sees it, but ``|<x, template>|`` does and an MLP learns that
  (about 90 % on 3 classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .splits import RawSplits, Split

COARSE = 8  # images are drawn as 3x8x8 coarse grids and upsampled: smooth, like photos
LINEAR_AMPLITUDE = 0.1  # in units of the per-cell nuisance std
XOR_AMPLITUDE = 0.2
PIXEL_SCALE = 40.0  # grey levels per unit
NOISE_STD = 6.0  # grey levels of white pixel noise on top


def synthetic_classes(num_classes: int = 3) -> list[str]:
    return [f"class{i}" for i in range(num_classes)]


def _images(labels: torch.Tensor, linear, xor, size: int, g: torch.Generator) -> torch.Tensor:
    n = labels.numel()
    sign = torch.randint(0, 2, (n, 1, 1, 1), generator=g).float() * 2 - 1
    coarse = torch.randn(n, 3, COARSE, COARSE, generator=g)  # nuisance: lighting, background, clutter
    coarse += LINEAR_AMPLITUDE * linear[labels] + XOR_AMPLITUDE * sign * xor[labels]
    x = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    x = 128.0 + PIXEL_SCALE * x + NOISE_STD * torch.randn(x.shape, generator=g)
    return x.round().clamp(0, 255).to(torch.uint8)


def make_synthetic(
    num_classes: int, train_per_class: int, test_per_class: int, size: int = 32, seed: int = 0
) -> RawSplits:
    """Generate the train and test splits: uint8 images (N, 3, size, size), int64 labels (N,); same seed, same data.

    Args:
        num_classes: how many classes.
        train_per_class: images per class in the train split (validation is carved from it later).
        test_per_class: images per class in the test split.
        size: image side in pixels.
        seed: the generator seed; the data depend on nothing else.
    """
    g = torch.Generator().manual_seed(seed)
    linear = torch.randn(num_classes, 3, COARSE, COARSE, generator=g)
    xor = torch.randn(num_classes, 3, COARSE, COARSE, generator=g)
    splits = []
    for per_class in (train_per_class, test_per_class):
        y = torch.arange(num_classes).repeat_interleave(per_class)
        y = y[torch.randperm(y.numel(), generator=g)]
        splits.append(Split(_images(y, linear, xor, size, g), y))
    train, test = splits
    return RawSplits(train, test)
