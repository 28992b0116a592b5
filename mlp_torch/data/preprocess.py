"""Input preprocessing, fitted on the training split only and carried with the model.

* :class:`Standardizer`: ``x̂ = (x − μ) / σ`` with μ, σ one number per input feature (3·H·W
  pixels, or the two coordinates of a 2-D dataset's points), measured on the training split
  (images in grey levels 0…255).
* :class:`Whitener` (``--whiten zca``): the standardised pixels, then ZCA-whitened with a
  regularised covariance (see its docstring).

Validation, test and predict reuse what was fitted on train: fitting on anything else would leak
those samples into the model.
"""

from __future__ import annotations

import math

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

    @classmethod
    def identity(cls, in_features: int) -> Standardizer:
        """Flattening only (μ = 0, σ = 1: exactly ``x``), for features preprocessed already."""
        return cls(torch.zeros(in_features), torch.ones(in_features))

    def to(self, device: torch.device | str) -> Standardizer:
        return Standardizer(self.mean.to(device), self.std.to(device))

    def __call__(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        flat = x.flatten(1)  # B,D, also for B = 0 (a process's share of a batch may be empty)
        if flat.shape[1] != self.in_features:
            raise ValueError(f"inputs have {flat.shape[1]} features, the standardiser was fitted on {self.in_features}")
        if self.mean.device != flat.device:
            self.mean, self.std = self.mean.to(flat.device), self.std.to(flat.device)
        # in place on a fresh copy: (x − μ) / σ to the same bits, with one temporary instead of three
        return flat.to(dtype, copy=True).sub_(self.mean.to(dtype)).div_(self.std.to(dtype))

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


# A direction whose eigenvalue is below ε/RANK_CUTOFF is scaled as if its eigenvalue were 0: its
# exact factor (λ + ε)^-½ is then within 1 % of ε^-½ (1/√1.02 = 0.990).
RANK_CUTOFF = 50


class Whitener:
    """``white(x) -> (B, D)``: standardise (:class:`Standardizer`), then ZCA-whiten (float32, or ``dtype``).

    Σ = U Λ Uᵀ is the covariance of the standardised training pixels z (mean 0). ZCA whitening
    rotates z onto the principal directions, rescales each by its regularised inverse standard
    deviation and rotates back, so the result stays an image (Bell & Sejnowski 1997; Krizhevsky
    2009, appendix A):

        x̂ = s · U (Λ + εI)^-½ Uᵀ z,      ε = zca_eps · mean(λ),  s: mean feature variance of x̂ = 1

    ε = 0 is full whitening (every direction variance 1, thousands of noise directions included);
    a large ε (10× the mean eigenvalue) is "soft": it flattens only the strongest, low-frequency
    directions, where nearby pixels move together, and scales the rest alike. Stored as the
    identity plus a low-rank correction, over the k directions with λ > ε/:data:`RANK_CUTOFF`:

        x̂ = c z + U_k diag(g) U_kᵀ z,    c = s/√ε,  g_i = s/√(λ_i + ε) − c

    (k ≈ 420 of 3,072 for CIFAR cat/dog at ε = 10 mean(λ): 5 MB in a checkpoint, not 38 MB).

    Args:
        standardizer: applied first.
        basis: U_k, (D, k) orthonormal columns.
        gains: g, (k,).
        scale: c.
    """

    def __init__(self, standardizer: Standardizer, basis: torch.Tensor, gains: torch.Tensor, scale: float) -> None:
        d = standardizer.in_features
        if basis.dim() != 2 or basis.shape[0] != d or gains.shape != basis.shape[1:]:
            raise ValueError(
                f"a whitener for {d} features needs a ({d}, k) basis and k gains, got {tuple(basis.shape)} "
                f"and {tuple(gains.shape)}"
            )
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"the whitener's scale must be a positive number, got {scale}")
        self.standardizer = standardizer
        self.basis = basis.to(torch.float32)
        self.gains = gains.to(torch.float32)
        self.scale = float(scale)

    @classmethod
    def fit(cls, standardizer: Standardizer, x: torch.Tensor, zca_eps: float, chunk: int = 4096) -> Whitener:
        """Fit on the training split: its covariance after ``standardizer``, then its eigendecomposition.

        Args:
            standardizer: fitted on the same split.
            x: the training images, uint8 (N, 3, H, W), or features (N, D).
            zca_eps: ε as a multiple of the mean eigenvalue (> 0).
            chunk: images per step (float32 products, summed in float64).
        """
        if not (zca_eps > 0 and math.isfinite(zca_eps)):
            raise ValueError(f"zca_eps must be a positive number, got {zca_eps}")
        d = standardizer.in_features
        cov = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        for start in range(0, len(x), chunk):
            z = standardizer.to(x.device)(x[start : start + chunk])  # B,D
            cov += (z.T @ z).double()  # D,B @ B,D -> D,D
        cov /= max(len(x) - 1, 1)  # Σ = Zᵀ Z / (n − 1): the standardised pixels have mean 0
        lam, u = torch.linalg.eigh(cov)  # ascending
        lam = lam.clamp_min(0)
        eps = zca_eps * max(float(lam.mean()), 1e-12)
        keep = lam > eps / RANK_CUTOFF
        # mean variance of the whitened features: λ/(λ + ε) along kept directions, ≈ λ/ε along the others
        variance = (float((lam[keep] / (lam[keep] + eps)).sum()) + float(lam[~keep].sum()) / eps) / d
        s = 1.0 / math.sqrt(variance)
        c = s / math.sqrt(eps)
        gains = s / (lam[keep] + eps).sqrt() - c
        return cls(standardizer, u[:, keep].to(torch.float32).cpu(), gains.cpu(), c)

    @property
    def in_features(self) -> int:
        return self.standardizer.in_features

    @property
    def mean(self) -> torch.Tensor:
        return self.standardizer.mean

    @property
    def rank(self) -> int:
        """k, the directions scaled by their own eigenvalue."""
        return self.basis.shape[1]

    def to(self, device: torch.device | str) -> Whitener:
        return Whitener(self.standardizer.to(device), self.basis.to(device), self.gains.to(device), self.scale)

    def __call__(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        z = self.standardizer(x, dtype)  # B,D
        if self.basis.device != z.device:
            self.basis, self.gains = self.basis.to(z.device), self.gains.to(z.device)
        basis, gains = self.basis.to(dtype), self.gains.to(dtype)
        # x̂ = c z + U_k diag(g) U_kᵀ z
        return self.scale * z + ((z @ basis) * gains) @ basis.T  # B,D @ D,k -> B,k; @ k,D -> B,D

    def images(self, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Whitened copies of images (N, C, H, W) as float32 (N, C, H, W): flips and crops then act on them."""
        return torch.cat([self(x[i : i + chunk]).reshape(x[i : i + chunk].shape) for i in range(0, len(x), chunk)])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The whitening after the standardiser (whose own state is saved beside it)."""
        return {
            "basis": self.basis.detach().cpu(),
            "gains": self.gains.detach().cpu(),
            "scale": torch.tensor(self.scale, dtype=torch.float64),
        }

    @classmethod
    def from_state_dict(cls, standardizer: Standardizer, state: dict[str, torch.Tensor]) -> Whitener:
        missing = {"basis", "gains", "scale"} - set(state)
        if missing:
            raise ValueError(f"whitener state lacks {', '.join(sorted(missing))}")
        return cls(standardizer, state["basis"], state["gains"], float(state["scale"]))

    def __repr__(self) -> str:
        return f"Whitener(in_features={self.in_features}, rank={self.rank}, device={self.basis.device})"


Preprocessor = Standardizer | Whitener


def preprocessor_from_state(
    standardizer: dict[str, torch.Tensor], whitener: dict[str, torch.Tensor] | None
) -> Preprocessor:
    """The preprocessing a checkpoint describes: its standardiser, whitened when it holds a whitener."""
    std = Standardizer.from_state_dict(standardizer)
    return std if whitener is None else Whitener.from_state_dict(std, whitener)


def fit_preprocessor(x: torch.Tensor, whiten: str = "none", zca_eps: float = 10.0) -> Preprocessor:
    """The training split's preprocessing: a :class:`Standardizer`, whitened for ``whiten="zca"``."""
    standardizer = Standardizer.fit(x)
    return Whitener.fit(standardizer, x, zca_eps) if whiten == "zca" else standardizer
