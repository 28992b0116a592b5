"""The data layer: CIFAR cat/dog/bear, image folders and synthetic data, decoded once, batched on the device.

opts = DataOptions(dataset="cifar", classes=["cat", "dog", "bear"])
bundle = load_data(opts)                       # CPU uint8 (N, 3, H, W) splits
std = Standardizer.fit(bundle.train.x)         # train statistics only; saved with the model
train = bundle.train.to(device)                # moved once
for xb, yb in DeviceBatches(train.x, train.y, 128, std, generator=g): ...
"""

from .bundle import DataBundle, balance_weights, describe_data_change, load_data, stratified_split
from .loader import DeviceBatches, class_weights, random_crop, random_flip
from .options import DataOptions, default_cache_dir
from .preprocess import Preprocessor, Standardizer, Whitener, fit_preprocessor, preprocessor_from_state
from .splits import RawSplits, Split

__all__ = [
    "DataBundle",
    "DataOptions",
    "DeviceBatches",
    "Preprocessor",
    "RawSplits",
    "Split",
    "Standardizer",
    "Whitener",
    "balance_weights",
    "class_weights",
    "default_cache_dir",
    "describe_data_change",
    "fit_preprocessor",
    "load_data",
    "preprocessor_from_state",
    "random_crop",
    "random_flip",
    "stratified_split",
]
