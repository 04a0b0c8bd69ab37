"""Data: readers for Market-1501 / DukeMTMC-reID / MSMT17, the synthetic set, the user's own data (a CSV
manifest, a folder per identity), several data sets combined, P x K sampling, transforms and loaders.
Items are ``(path, pid, camid)`` with 0-based cameras; see ``base.py``."""

from .base import Item, ReIDDataset
from .combined import CombinedDataset
from .datasets import DATASETS, build_dataset, dataset_key
from .folder_layout import DukeMTMCreID, Market1501
from .identity_folders import IdentityFolders
from .image_dataset import ImageDataset, read_image
from .loaders import build_eval_loaders, build_train_loader
from .manifest import ManifestDataset
from .msmt17 import MSMT17
from .sampler import PKBatchSampler
from .synthetic import SyntheticReID, make_synthetic, read_marker
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

__all__ = [
    "Item",
    "ReIDDataset",
    "DATASETS",
    "build_dataset",
    "dataset_key",
    "CombinedDataset",
    "ManifestDataset",
    "IdentityFolders",
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
