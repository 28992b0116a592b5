"""What to load: the typed :class:`DataOptions` (its fields are the data flags of every command)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..utils import check_seed, option
from .planar import PLANAR_DATASETS, PLANAR_FEATURES, planar_num_classes

DATASETS = ("cifar", "folder", "synthetic", *PLANAR_DATASETS)
BALANCE_CHOICES = ("none", "weights", "sample")
WHITEN_CHOICES = ("none", "zca")

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

    The defaults are what ``mlp-torch train`` uses (random flips and 2-pixel crops of images
    included), so ``TrainConfig(data=DataOptions(...))`` trains what the same flags train.
    ``classes=None`` means the dataset's default: ``cat,dog,bear`` for CIFAR, every class folder
    for ``folder``, ``class0..class2`` for ``synthetic``, ``class0,class1`` for the 2-D datasets
    and ``arm0..`` for ``spiral``. ``cache_dir=None`` means :func:`default_cache_dir`;
    ``cache=False`` decodes afresh every time and writes nothing. ``seed=None`` means the run's
    seed in a :class:`~mlp_torch.training.TrainConfig`, else 0. Augmentation left at ``None`` is
    the dataset's default, set on construction: flips and 2-pixel crops for images, none for points.

    The 2-D datasets (``linear``, ``xor``, ``circles``, ``spiral``; see :mod:`mlp_torch.data.planar`)
    are points, not images: ``samples`` points in train and as many in test, Gaussian jitter of
    std ``noise``, ``arms`` spiral arms (= classes); image size, cache and augmentation do not apply.
    """

    dataset: str = option(
        "cifar",
        choices=DATASETS,
        help="cifar: CIFAR-10/100 classes by name; folder: DATA_ROOT/{train,test}/<class>/*; "
        "synthetic: seeded CIFAR-shaped data, no files needed; linear, xor, circles, spiral: "
        "seeded 2-D points (no augmentation)",
    )
    data_root: Path = option(
        Path("data"),
        help="where the CIFAR archives live (downloaded when missing) or the image folder; ignored by synthetic",
    )
    classes: list[str] | None = option(
        None,
        parse=parse_classes,
        help="comma-separated class names, labelled 0..K-1 in this order (default: cat,dog,bear for cifar, "
        "every class folder for folder, class0,class1,class2 for synthetic, class0,class1 for linear, xor and "
        "circles, arm0,arm1,... for spiral)",
    )
    val_fraction: float = option(0.1, help="fraction of each class of the official train split held out for validation")
    image_size: int = option(32, metavar="SIZE", help="images are resized to SIZE x SIZE pixels (not 2-D points)")
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
    augment_flip: bool | None = option(
        None, help="random horizontal flips of training images (default: on for images, off for 2-D points)"
    )
    augment_crop: int | None = option(
        None,
        metavar="PAD",
        help="random crops of training images zero-padded by PAD pixels, 0 = off (default: 2 for images, "
        "0 for 2-D points)",
    )
    whiten: str = option(
        "none",
        choices=WHITEN_CHOICES,
        help="zca: after standardising, ZCA-whiten the images (fitted on train, stored with the model; "
        "training images are whitened once, then flipped and cropped)",
    )
    zca_eps: float = option(
        10.0,
        metavar="K",
        help="ZCA's ε as K times the mean eigenvalue of the training pixels' covariance: 10 flattens only the "
        "strongest, low-frequency directions (soft ZCA); 0.01 is nearly full whitening",
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
    samples: int = option(
        1000,
        metavar="N",
        help="2-D datasets: points in train (--val-fraction of them held out for validation), and as many in test",
    )
    noise: float = option(
        0.1,
        metavar="STD",
        help="2-D datasets: the standard deviation of Gaussian jitter added to each coordinate, in the units of "
        "the data's [-1.5, 1.5]² box (spiral: times the radius; linear: widens the blobs, keeps the margin)",
    )
    arms: int = option(3, metavar="N", help="spiral: its arms, one class each (2 to 100)")

    def __post_init__(self) -> None:
        self.data_root = Path(self.data_root)
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)
        if self.dataset not in DATASETS:
            raise UsageError(f"unknown dataset {self.dataset!r}; use one of {', '.join(DATASETS)}")
        if self.augment_flip is None:  # the dataset's default: images are flipped and cropped, points not
            self.augment_flip = not self.is_planar
        if self.augment_crop is None:
            self.augment_crop = 0 if self.is_planar else 2
        if self.whiten not in WHITEN_CHOICES:
            raise UsageError(f"unknown --whiten {self.whiten!r}; use one of {', '.join(WHITEN_CHOICES)}")
        if not (isinstance(self.zca_eps, (int, float)) and self.zca_eps > 0 and math.isfinite(self.zca_eps)):
            raise UsageError(f"--zca-eps must be a positive number, got {self.zca_eps!r}")
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
        if self.is_planar:
            self._check_planar()

    @property
    def is_planar(self) -> bool:
        """Whether the dataset is one of the 2-D point sets (float (N, 2) features, not images)."""
        return self.dataset in PLANAR_DATASETS

    @property
    def in_features(self) -> int:
        """Inputs per sample, as the model sees them: 3·H·W for images, 2 for the 2-D datasets' points."""
        return PLANAR_FEATURES if self.is_planar else 3 * self.image_size * self.image_size

    def _check_planar(self) -> None:
        if isinstance(self.arms, bool) or not isinstance(self.arms, int) or not 2 <= self.arms <= 100:
            raise UsageError(f"--arms must be an integer between 2 and 100, got {self.arms!r}")
        num_classes = planar_num_classes(self.dataset, self.arms)
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 2 * num_classes:
            raise UsageError(
                f"--samples must be at least 2 per class ({2 * num_classes} for {self.dataset}), got {self.samples!r}"
            )
        if not (isinstance(self.noise, (int, float)) and 0.0 <= self.noise <= 10.0):
            raise UsageError(f"--noise must be a number between 0 and 10, got {self.noise!r}")
        if self.classes is not None and len(self.classes) != num_classes:
            raise UsageError(
                f"--classes names {len(self.classes)} classes, but {self.dataset} has {num_classes}"
                + (" (set --arms)" if self.dataset == "spiral" else "")
            )
        if self.augment_flip or self.augment_crop:
            raise UsageError(f"{self.dataset} holds 2-D points, not images: turn off --augment-flip and --augment-crop")

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else default_cache_dir()

    @property
    def resolved_seed(self) -> int:
        return self.seed if self.seed is not None else 0
