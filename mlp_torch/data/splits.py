"""The tensors of a dataset, typed: one :class:`Split`, and the :class:`RawSplits` a source delivers."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Split:
    """One split: uint8 images (N, 3, H, W), or float32 points (N, 2) of a 2-D dataset, and int64 labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))

    def counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.y, minlength=num_classes).tolist()


@dataclass
class RawSplits:
    """A dataset's official train and test splits as its source delivers them (and the cache stores
    them); validation is carved out of ``train`` later, by :func:`~mlp_torch.data.load_data`."""

    train: Split
    test: Split
