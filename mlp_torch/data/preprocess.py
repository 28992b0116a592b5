"""Per-feature standardisation, fitted on the training split only and carried with the model.

``x̂ = (x − μ) / σ`` with μ, σ one number per input feature (3·H·W pixels, or the two coordinates
of a 2-D dataset's points), measured on the training split (images in grey levels 0…255).
Validation, test and predict reuse the same μ, σ: fitting them on anything but train would leak
those samples into the model.
"""

from __future__ import annotations

import torch

MIN_STD = 1.0  # grey levels: a pixel that never varies in train is left unscaled, not blown up
MIN_STD_FLOAT = 1e-6  # float features (2-D points): only guards against dividing by zero


class Standardizer:
    """``std(x) -> (B, D)``: flatten, subtract the train mean, divide by the train std (float32, or ``dtype``).

    ``x`` is uint8 images (B, 3, H, W), D = 3·H·W, or float points (B, D).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        if mean.dim() != 1 or mean.shape != std.shape:
            raise ValueError(f"mean and std must be matching vectors, got {tuple(mean.shape)} and {tuple(std.shape)}")
        self.mean = mean.to(torch.float32)
        self.std = std.to(torch.float32)

    @classmethod
    def fit(cls, x: torch.Tensor, min_std: float | None = None, chunk: int = 4096) -> Standardizer:
        """Measure per-feature mean and std on the training split.

        Args:
            x: the training images, uint8 (N, 3, H, W) or (N, D), or float features (N, D), on any device.
            min_std: the std is clamped to at least this; default ``MIN_STD`` (one grey level) for
                uint8 images, ``MIN_STD_FLOAT`` for float features.
            chunk: images per step, so float64 copies of a large split never sit in memory at once.
        """
        if len(x) < 2:
            raise ValueError(f"need at least 2 training images to standardise, got {len(x)}")
        if min_std is None:
            min_std = MIN_STD if x.dtype == torch.uint8 else MIN_STD_FLOAT
        flat = x.reshape(len(x), -1)
        total = torch.zeros(flat.shape[1], dtype=torch.float64, device=x.device)
        total_sq = torch.zeros_like(total)
        for start in range(0, len(flat), chunk):
            part = flat[start : start + chunk].to(torch.float64)
            total += part.sum(0)
            total_sq += part.square().sum(0)
        n = len(flat)
        mean = total / n
        # exact enough in float64 for values of 0..255 and for points of mean ≈ 0 and std ≈ 1
        var = (total_sq - n * mean.square()).clamp_min(0) / (n - 1)
        return cls(mean, var.sqrt().clamp_min(min_std))

    @property
    def in_features(self) -> int:
        return self.mean.numel()

    def to(self, device: torch.device | str) -> Standardizer:
        return Standardizer(self.mean.to(device), self.std.to(device))

    def __call__(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        flat = x.flatten(1)  # B,D, also for B = 0 (a process's share of a batch may be empty)
        if flat.shape[1] != self.in_features:
            raise ValueError(f"inputs have {flat.shape[1]} features, the standardiser was fitted on {self.in_features}")
        if self.mean.device != flat.device:
            self.mean, self.std = self.mean.to(flat.device), self.std.to(flat.device)
        return (flat.to(dtype) - self.mean.to(dtype)) / self.std.to(dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.detach().cpu(), "std": self.std.detach().cpu()}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> Standardizer:
        """Rebuild from :meth:`state_dict` (plain tensors, so ``torch.load(weights_only=True)`` reads it).

        Args:
            state: a dict with ``mean`` and ``std``.
        """
        missing = {"mean", "std"} - set(state)
        if missing:
            raise ValueError(f"standardiser state lacks {', '.join(sorted(missing))}")
        return cls(state["mean"], state["std"])

    def __repr__(self) -> str:
        return f"Standardizer(in_features={self.in_features}, device={self.mean.device})"
