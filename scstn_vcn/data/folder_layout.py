"""Readers for the Market-1501 folder layout (also used by DukeMTMC-reID and the synthetic set).

The data set folder holds ``bounding_box_train/``, ``query/`` and ``bounding_box_test/`` (gallery).
Identity and camera come from the file name, e.g. ``0002_c1s1_000451_00.jpg`` (Market) or
``0001_c2_f0046182.jpg`` (Duke): ``([-\\d]+)_c(\\d)`` gives identity 2 / 1 and camera 1 / 2 (1-based
in the name, 0-based here). Identity -1 marks junk boxes (dropped); identity 0 marks distractors
(kept: in the gallery they are legitimate non-matches).
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import IMAGE_SUFFIXES, Item, ReIDDataset, relabel, resolve_root

NAME_PATTERN = re.compile(r"([-\d]+)_c(\d)")
SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def parse_name(path: Path) -> tuple[int, int]:
    """(pid, 0-based camid) from a Market-style file name; ValueError naming the file otherwise."""
    match = NAME_PATTERN.search(path.name)
    if match is None:
        raise ValueError(
            f"cannot parse identity and camera from file name {path} "
            f"(expected a name like 0002_c1s1_000451_00.jpg matching {NAME_PATTERN.pattern!r})"
        )
    pid, cam = int(match.group(1)), int(match.group(2))
    if cam < 1:
        raise ValueError(f"camera index in {path} is {cam}; expected 1-based cameras (c1, c2, ...)")
    return pid, cam - 1


def read_folder(folder: Path) -> list[Item]:
    """All images of one split folder, sorted by name, junk (-1) dropped."""
    items = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue  # Thumbs.db, readme files and the like sit next to the images in some copies
        pid, camid = parse_name(path)
        if pid == -1:
            continue
        if pid < 0:
            raise ValueError(f"identity {pid} in {path}: expected -1 (junk), 0 (distractor) or a positive id")
        items.append(Item(str(path), pid, camid))
    return items


class MarketLayoutDataset(ReIDDataset):
    """A data set in the Market-1501 layout; subclasses set ``name`` and ``folder_names``."""

    folder_names: tuple[str, ...] = ()

    def __init__(self, root: str | Path):
        data_dir = resolve_root(root, self.folder_names, list(SPLIT_FOLDERS.values()), self.name)
        train = relabel(read_folder(data_dir / SPLIT_FOLDERS["train"]))
        query = read_folder(data_dir / SPLIT_FOLDERS["query"])
        gallery = read_folder(data_dir / SPLIT_FOLDERS["gallery"])
        super().__init__(train, query, gallery, data_dir)


class Market1501(MarketLayoutDataset):
    """Market-1501: 751 training identities, 750 test identities, 6 cameras."""

    name = "market1501"
    folder_names = ("Market-1501-v15.09.15", "market1501", "Market-1501")


class DukeMTMCreID(MarketLayoutDataset):
    """DukeMTMC-reID: 702 training identities, 1,110 gallery identities (408 distractors), 8 cameras."""

    name = "dukemtmcreid"
    folder_names = ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmcreid")
