"""``build_dataset(name, root, **kwargs)``: the data set readers by name."""

from __future__ import annotations

from pathlib import Path

from .base import ReIDDataset
from .folder_layout import DukeMTMCreID, Market1501
from .identity_folders import IdentityFolders
from .manifest import ManifestDataset
from .msmt17 import MSMT17
from .synthetic import SyntheticReID

DATASETS = {
    "market1501": Market1501,
    "dukemtmcreid": DukeMTMCreID,
    "msmt17": MSMT17,
    "synthetic": SyntheticReID,  # a folder written by make_synthetic (Market-1501 layout)
    "manifest": ManifestDataset,  # a CSV file: path,pid,camid,split (any layout)
    "folders": IdentityFolders,  # <root>/<split>/<pid>/<image> (ImageFolder-style)
}


def dataset_key(name: str) -> str:
    """The registry key of a data set name (case, '-' and '_' do not matter); ValueError if unknown."""
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    return key


def build_dataset(name: str, root: str | Path, **kwargs) -> ReIDDataset:
    """Read data set ``name`` (one of DATASETS) from ``root``; kwargs go to its reader (e.g. combine_trainval)."""
    return DATASETS[dataset_key(name)](root, **kwargs)
