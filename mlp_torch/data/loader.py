"""Batches cut from tensors that already sit on the device: no per-sample Python, no PIL, no workers.

Each epoch draws one permutation (or, for ``--balance sample``, one class-balanced multinomial
draw) on the device, then slices it. Augmentation runs on the uint8 batch before it is flattened
and standardised. All randomness comes from the ``torch.Generator`` passed in, so the trainer can
save and restore its state and resume bit for bit.

With several processes (``torchrun``), each holds the same generator and keeps its ``shard`` of
every batch: the order and the augmentation are drawn for the whole batch on every process alike
and only then cut, so N processes train on exactly the images, flips and crops of one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .preprocess import Standardizer


def class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights ``w_c ∝ 1 / n_c``, normalised to mean 1 over present classes.

    Args:
        y: int64 labels (N,).
        num_classes: C; a class absent from ``y`` gets weight 0.
    """
    counts = torch.bincount(y, minlength=num_classes).to(torch.float32)
    inverse = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
    return inverse / inverse[counts > 0].mean()


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image (B, C, H, W) left-right with probability 1/2.

    The batch and its mirror image side by side (2B images); one ``index_select`` then takes
    each image from one half or the other: whole-image copies, 3× faster than a per-pixel
    ``gather`` of reversed columns.
    """
    flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
    both = torch.cat([x, x.flip(3)])  # 2B,C,H,W
    return both.index_select(0, torch.arange(len(x), device=x.device) + len(x) * flip)


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each image (B, C, H, W) by ``pad`` pixels and cut a random H x W window back out.

    Every H x W window of the padded batch (B, C, H', W') is a strided view of its memory: the
    window that starts at flat element ``s`` steps ``(H'·W', W', 1)`` through channels, rows and
    columns. Image ``b``'s window, at row ``top`` and column ``left`` of its padded image, starts
    at ``s = b·C·H'·W' + top·W' + left``; one ``index_select`` over those starts copies the B
    windows (8× faster than indexing an ``unfold`` view of them).
    """
    b, c, h, w = x.shape
    top = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=x.device)
    left = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=x.device)
    if b == 0:
        return x
    padded = F.pad(x, (pad, pad, pad, pad)).reshape(-1)  # B·C·H'·W' (contiguous)
    hp, wp = h + 2 * pad, w + 2 * pad
    last = padded.numel() - ((c - 1) * hp * wp + (h - 1) * wp + w)  # the last start whose window fits
    windows = padded.as_strided((last + 1, c, h, w), (1, hp * wp, wp, 1))  # every window (a view)
    starts = torch.arange(b, device=x.device) * (c * hp * wp) + top * wp + left
    return windows.index_select(0, starts)  # B,C,H,W


class DeviceBatches:
    """Iterate ``(xb (B, D) standardised, yb int64 (B,))`` over tensors on one device.

    Args:
        x: uint8 images (N, 3, H, W), D = 3·H·W, or float points (N, D), on the device.
        y: int64 labels (N,) on the same device.
        batch_size: images per batch.
        standardizer: fitted on train; applied after augmentation.
        shuffle: a fresh order each epoch (ignored when ``sample_weights`` is given: that draws anyway).
        generator: the only source of randomness; must live on ``x``'s device. ``None`` makes one
            seeded with 0, so an evaluation loader needs none.
        augment_flip: random horizontal flips (images only).
        augment_crop: random crops after zero-padding by this many pixels (0 = off; images only).
        sample_weights: per-class weights (C,) for balanced sampling: each epoch draws N indices with
            replacement, index i with probability ∝ ``sample_weights[y[i]]``.
        drop_last: drop the last, smaller batch.
        dtype: the floating-point type the batches are standardised into.
        shard: ``(rank, world_size)``: keep only this process's rows of every batch
            (``torch.tensor_split``'s: contiguous, the first ``B mod world_size`` one row more); the
            draws are made for the whole batch all the same.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        standardizer: Standardizer,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        augment_flip: bool = False,
        augment_crop: int = 0,
        sample_weights: torch.Tensor | None = None,
        drop_last: bool = False,
        dtype: torch.dtype = torch.float32,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} images but y has {len(y)} labels")
        if x.device != y.device:
            raise ValueError(f"x is on {x.device} but y is on {y.device}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if (augment_flip or augment_crop) and x.dim() != 4:
            raise ValueError(f"flips and crops augment images (N, C, H, W); these samples are {tuple(x.shape[1:])}")
        if not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard}")
        if generator is None:
            generator = torch.Generator(x.device).manual_seed(0)
        if generator.device.type != x.device.type:
            raise ValueError(f"the generator is on {generator.device} but the data are on {x.device}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.standardizer = standardizer.to(x.device)
        self.shuffle = shuffle
        self.generator = generator
        self.augment_flip = augment_flip
        self.augment_crop = augment_crop
        self.drop_last = drop_last
        self.dtype = dtype
        self.shard = shard
        self.per_sample = None if sample_weights is None else sample_weights.to(x.device, torch.float32)[y]

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch_order(self) -> torch.Tensor:
        """This epoch's sample order (draws from the generator); feed it to :meth:`batch`."""
        return self._order()

    def batch(self, order: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``i`` of an epoch whose order came from :meth:`epoch_order`, augmented and standardised.

        Iterating yields exactly ``batch(order, 0), batch(order, 1), …``; the trainer calls these
        two directly so that it can stop after any batch and resume at the next one. With a
        ``shard``, this process's rows of it: the whole batch is drawn and augmented (uint8, cheap
        beside a step), so that every process's generator makes the same draws, and only its rows
        are standardised.
        """
        idx = order[i * self.batch_size : (i + 1) * self.batch_size]
        xb = self.x.index_select(0, idx)  # whole-image copies (a 25× faster gather than x[idx])
        if self.augment_crop:
            xb = random_crop(xb, self.augment_crop, self.generator)
        if self.augment_flip:
            xb = random_flip(xb, self.generator)
        rank, world_size = self.shard
        xb, yb = xb.tensor_split(world_size)[rank], self.y.index_select(0, idx).tensor_split(world_size)[rank]
        return self.standardizer(xb, self.dtype), yb

    def _order(self) -> torch.Tensor:
        n = len(self.x)
        if self.per_sample is not None:
            return torch.multinomial(self.per_sample, n, replacement=True, generator=self.generator)
        if self.shuffle:
            return torch.randperm(n, generator=self.generator, device=self.x.device)
        return torch.arange(n, device=self.x.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if len(self.x) == 0:
            return
        order = self.epoch_order()
        for i in range(len(self)):
            yield self.batch(order, i)
