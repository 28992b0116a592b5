"""What to load: the typed :class:`DataOptions`, and the data flags shared by every command.

``add_data_arguments(parser)`` adds the flags; ``data_options_from_args(args)`` turns the parsed
namespace into :class:`DataOptions`. The commands ``data``, ``train``, ``compare`` and ``bench``
all use the pair, so the flags read the same everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..utils import check_seed
from .planar import PLANAR_DATASETS, planar_num_classes

DATASETS = ("cifar", "folder", "synthetic", *PLANAR_DATASETS)
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
    for ``folder``, ``class0..class2`` for ``synthetic``, ``class0,class1`` for the 2-D datasets
    and ``arm0..`` for ``spiral``. ``cache_dir=None`` means :func:`default_cache_dir`;
    ``cache=False`` decodes afresh every time and writes nothing.

    The 2-D datasets (``linear``, ``xor``, ``circles``, ``spiral``; see :mod:`mlp_torch.data.planar`)
    are points, not images: ``samples`` points in train and as many in test, Gaussian jitter of
    std ``noise``, ``arms`` spiral arms (= classes); image size, cache and augmentation do not apply.
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
    samples: int = 1000
    noise: float = 0.1
    arms: int = 3

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
        if self.is_planar:
            self._check_planar()

    @property
    def is_planar(self) -> bool:
        """Whether the dataset is one of the 2-D point sets (float (N, 2) features, not images)."""
        return self.dataset in PLANAR_DATASETS

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


def parse_classes(text: str | None) -> list[str] | None:
    """``"cat, dog,bear"`` -> ``["cat", "dog", "bear"]``; ``None`` or ``""`` -> ``None`` (the default)."""
    if text is None or not text.strip():
        return None
    return [name.strip() for name in text.split(",")]


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the data flags to a command's parser (``--seed`` is left to the command).

    Args:
        parser: the subcommand's parser; the flags go into an argument group "data".
    """
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        choices=DATASETS,
        default="cifar",
        help="cifar: CIFAR-10/100 classes by name; folder: DATA_ROOT/{train,test}/<class>/*; "
        "synthetic: seeded CIFAR-shaped data, no files needed; linear, xor, circles, spiral: "
        "seeded 2-D points (no augmentation)",
    )
    group.add_argument(
        "--data-root",
        type=Path,
        default=Path("data"),
        help="where the CIFAR archives live (downloaded when missing) or the image folder; ignored by synthetic",
    )
    group.add_argument(
        "--classes",
        type=parse_classes,
        default=None,
        help="comma-separated class names, labelled 0..K-1 in this order "
        "(default: cat,dog,bear for cifar, every class folder for folder, "
        "class0,class1,class2 for synthetic)",
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of each class of the official train split held out for validation",
    )
    group.add_argument("--image-size", type=int, default=32, help="images are resized to SIZE x SIZE pixels")
    group.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where decoded uint8 tensors are cached (default: $XDG_CACHE_HOME/mlp_torch or ~/.cache/mlp_torch)",
    )
    group.add_argument(
        "--no-cache", dest="cache", action="store_false", help="decode the images afresh and write no cache"
    )
    group.add_argument(
        "--balance",
        choices=BALANCE_CHOICES,
        default="none",
        help="for imbalanced classes: weights = inverse-frequency class weights in the loss, "
        "sample = draw training batches class-balanced",
    )
    group.add_argument(
        "--augment-flip",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="random horizontal flips of training images",
    )
    group.add_argument(
        "--augment-crop",
        type=int,
        default=0,
        metavar="PAD",
        help="random crops of training images zero-padded by PAD pixels (0 = off)",
    )
    for key, env in ENV_OVERRIDES.items():
        default = _env_default(key)
        what = "URL" if key.endswith("url") else "md5 sum"
        archive = "CIFAR-10" if key.startswith("cifar10_") else "CIFAR-100"
        group.add_argument(
            f"--{key.replace('_', '-')}",
            default=default,
            metavar=what.split()[0].upper(),
            help=f"{archive} archive {what} (environment: {env})",
        )


def data_options_from_args(args: argparse.Namespace) -> DataOptions:
    """Build :class:`DataOptions` from a namespace parsed with :func:`add_data_arguments`.

    Args:
        args: the parsed arguments; every :class:`DataOptions` field found in them is used
            (``args.seed`` seeds the validation split when the command has ``--seed``).
    """
    present = {f.name: getattr(args, f.name) for f in dataclasses.fields(DataOptions) if hasattr(args, f.name)}
    return DataOptions(**present)
