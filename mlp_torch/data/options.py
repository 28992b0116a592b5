"""What to load: the typed :class:`DataOptions` (its fields are the data flags of every command)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..utils import check_seed, option

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


def parse_classes(text: str | None) -> list[str] | None:
    """``"cat, dog,bear"`` -> ``["cat", "dog", "bear"]``; ``None`` or ``""`` -> ``None`` (the default)."""
    if text is None or not text.strip():
        return None
    return [name.strip() for name in text.split(",")]


@dataclass
class DataOptions:
    """Everything that decides which images a run sees and how they are fed; every field is a flag.

    The defaults are what ``mlp-torch train`` uses (random flips and 2-pixel crops included), so
    ``TrainConfig(data=DataOptions(...))`` trains what the same flags train.
    ``classes=None`` means the dataset's default: ``cat,dog,bear`` for CIFAR, every class folder
    for ``folder``, ``class0..class2`` for ``synthetic``. ``cache_dir=None`` means
    :func:`default_cache_dir`; ``cache=False`` decodes afresh every time and writes nothing.
    ``seed=None`` means the run's seed in a :class:`~mlp_torch.training.TrainConfig`, else 0.
    """

    dataset: str = option(
        "cifar",
        choices=DATASETS,
        help="cifar: CIFAR-10/100 classes by name; folder: DATA_ROOT/{train,test}/<class>/*; "
        "synthetic: seeded CIFAR-shaped data, no files needed",
    )
    data_root: Path = option(
        Path("data"),
        help="where the CIFAR archives live (downloaded when missing) or the image folder; ignored by synthetic",
    )
    classes: list[str] | None = option(
        None,
        parse=parse_classes,
        help="comma-separated class names, labelled 0..K-1 in this order (default: cat,dog,bear for cifar, "
        "every class folder for folder, class0,class1,class2 for synthetic)",
    )
    val_fraction: float = option(0.1, help="fraction of each class of the official train split held out for validation")
    image_size: int = option(32, metavar="SIZE", help="images are resized to SIZE x SIZE pixels")
    cache_dir: Path | None = option(
        None,
        help="where decoded uint8 tensors are cached (default: $XDG_CACHE_HOME/mlp_torch or ~/.cache/mlp_torch)",
    )
    cache: bool = option(True, help="cache the decoded images in --cache-dir (--no-cache: decode afresh, write none)")
    seed: int | None = option(
        None, help="seed of the validation split and the synthetic data (default: the run's seed, else 0)"
    )
    balance: str = option(
        "none",
        choices=BALANCE_CHOICES,
        help="for imbalanced classes: weights = inverse-frequency class weights in the loss, "
        "sample = draw training batches class-balanced",
    )
    augment_flip: bool = option(True, help="random horizontal flips of training images")
    augment_crop: int = option(
        2, metavar="PAD", help="random crops of training images zero-padded by PAD pixels (0 = off)"
    )
    cifar10_url: str = option(
        default_factory=lambda: _env_default("cifar10_url"),
        metavar="URL",
        help=f"CIFAR-10 archive URL (environment: {ENV_OVERRIDES['cifar10_url']})",
    )
    cifar10_md5: str = option(
        default_factory=lambda: _env_default("cifar10_md5"),
        metavar="MD5",
        help=f"CIFAR-10 archive md5 sum (environment: {ENV_OVERRIDES['cifar10_md5']})",
    )
    cifar100_url: str = option(
        default_factory=lambda: _env_default("cifar100_url"),
        metavar="URL",
        help=f"CIFAR-100 archive URL (environment: {ENV_OVERRIDES['cifar100_url']})",
    )
    cifar100_md5: str = option(
        default_factory=lambda: _env_default("cifar100_md5"),
        metavar="MD5",
        help=f"CIFAR-100 archive md5 sum (environment: {ENV_OVERRIDES['cifar100_md5']})",
    )
    download_timeout: float = option(
        10.0, metavar="SECONDS", help="how long a CIFAR download waits for the server before giving up"
    )
    synthetic_train_per_class: int = option(1000, metavar="N", help="synthetic: training images per class")
    synthetic_test_per_class: int = option(200, metavar="N", help="synthetic: test images per class")

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
        if self.seed is not None:
            check_seed(self.seed)
        if not (self.download_timeout > 0 and math.isfinite(self.download_timeout)):
            raise UsageError(f"--download-timeout must be a positive number of seconds, got {self.download_timeout}")
        if min(self.synthetic_train_per_class, self.synthetic_test_per_class) < 1:
            raise UsageError("--synthetic-train-per-class and --synthetic-test-per-class must be at least 1")
        if not 1 <= self.image_size <= 1024:
            raise UsageError(f"--image-size must be between 1 and 1024 pixels, got {self.image_size}")
        if self.augment_crop < 0 or self.augment_crop >= self.image_size:
            raise UsageError(
                f"--augment-crop padding must be in [0, image size {self.image_size}), got {self.augment_crop} "
                "(0 turns crops off)"
            )
        if self.classes is not None:
            if not self.classes or any(not name for name in self.classes):
                raise UsageError("--classes needs a comma-separated list of class names, e.g. cat,dog,bear")
            if len(set(self.classes)) != len(self.classes):
                raise UsageError(f"--classes lists a name twice: {','.join(self.classes)}")

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else default_cache_dir()

    @property
    def resolved_seed(self) -> int:
        return self.seed if self.seed is not None else 0
