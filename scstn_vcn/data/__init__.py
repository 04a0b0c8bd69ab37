"""Data: readers for Market-1501 / DukeMTMC-reID / MSMT17, the synthetic set, P x K sampling,
transforms and loaders. Items are ``(path, pid, camid)`` with 0-based cameras; see ``base.py``."""

from .base import Item, ReIDDataset
from .datasets import DATASETS, build_dataset
from .folder_layout import DukeMTMCreID, Market1501
from .image_dataset import ImageDataset, read_image
from .loaders import build_eval_loaders, build_train_loader
from .msmt17 import MSMT17
from .sampler import PKBatchSampler
from .synthetic import SyntheticReID, make_synthetic, read_marker
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

__all__ = [
    "Item",
    "ReIDDataset",
    "DATASETS",
    "build_dataset",
    "Market1501",
    "DukeMTMCreID",
    "MSMT17",
    "SyntheticReID",
    "ImageDataset",
    "read_image",
    "build_train_loader",
    "build_eval_loaders",
    "PKBatchSampler",
    "make_synthetic",
    "read_marker",
    "build_transforms",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
