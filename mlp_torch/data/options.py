"""What to load: the typed :class:`DataOptions` (its fields are the data flags of every command)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..utils import check_seed

DATASETS = ("cifar", "folder", "synthetic")
BALANCE_CHOICES = ("none", "weights", "sample")

# The official archives (https://www.cs.toronto.edu/~kriz/cifar.html); each can be overridden by a
# flag or an environment variable, so a mirror, a local file:// copy or a test server can stand in.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ENV_OVERRIDES = {
    "cifar10_url": "MLP_TORCH_CIFAR10_URL",
    "cifar10_md5": "MLP_TORCH_CIFAR10_MD5",
    "cifar100_url": "MLP_TORCH_CIFAR100_URL",
    "cifar100_md5": "MLP_TORCH_CIFAR100_MD5",
}


def _env_default(key: str) -> str:
    return os.environ.get(ENV_OVERRIDES[key]) or globals()[key.upper()]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mlp_torch``, else ``~/.cache/mlp_torch``: the data root may be read-only."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mlp_torch"


@dataclass
class DataOptions:
    """Everything that decides which images a run sees and how they are fed.

    ``classes=None`` means the dataset's default: ``cat,dog,bear`` for CIFAR, every class folder
    for ``folder``, ``class0..class2`` for ``synthetic``. ``cache_dir=None`` means
    :func:`default_cache_dir`; ``cache=False`` decodes afresh every time and writes nothing.
    """

    dataset: str = "cifar"
    data_root: Path = Path("data")
    classes: list[str] | None = None
    val_fraction: float = 0.1
    image_size: int = 32
    cache_dir: Path | None = None
    cache: bool = True
    seed: int = 0
    balance: str = "none"
    augment_flip: bool = False
    augment_crop: int = 0
    cifar10_url: str = field(default_factory=lambda: _env_default("cifar10_url"))
    cifar10_md5: str = field(default_factory=lambda: _env_default("cifar10_md5"))
    cifar100_url: str = field(default_factory=lambda: _env_default("cifar100_url"))
    cifar100_md5: str = field(default_factory=lambda: _env_default("cifar100_md5"))
    download_timeout: float = 10.0
    synthetic_train_per_class: int = 1000
    synthetic_test_per_class: int = 200

    def __post_init__(self) -> None:
        self.data_root = Path(self.data_root)
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)
        if self.dataset not in DATASETS:
            raise UsageError(f"unknown dataset {self.dataset!r}; use one of {', '.join(DATASETS)}")
        if self.balance not in BALANCE_CHOICES:
            raise UsageError(f"unknown --balance {self.balance!r}; use one of {', '.join(BALANCE_CHOICES)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UsageError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        check_seed(self.seed)
        if not 1 <= self.image_size <= 1024:
            raise UsageError(f"--image-size must be between 1 and 1024 pixels, got {self.image_size}")
        if self.augment_crop < 0 or self.augment_crop >= self.image_size:
            raise UsageError(f"--augment-crop padding must be in [0, image size), got {self.augment_crop}")
        if self.classes is not None:
            if not self.classes or any(not name for name in self.classes):
                raise UsageError("--classes needs a comma-separated list of class names, e.g. cat,dog,bear")
            if len(set(self.classes)) != len(self.classes):
                raise UsageError(f"--classes lists a name twice: {','.join(self.classes)}")

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else default_cache_dir()


def parse_classes(text: str | None) -> list[str] | None:
    """``"cat, dog,bear"`` -> ``["cat", "dog", "bear"]``; ``None`` or ``""`` -> ``None`` (the default)."""
    if text is None or not text.strip():
        return None
    return [name.strip() for name in text.split(",")]
