"""Shared pieces of the data-set readers: the item type, root lookup and split checks.

Every reader produces three lists of ``(path, pid, camid)`` items (torchreid's convention):
``train`` with identities relabelled 0..N-1 (so they index the classifier directly), and
``query`` / ``gallery`` with the original identities (evaluation only compares them).
Camera ids are 0-based everywhere.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "query", "gallery")
JUNK_PID = -1  # boxes that are no one (Market's convention), dropped by every reader


class Item(NamedTuple):
    """One image: its path (str), identity and 0-based camera."""

    path: str
    pid: int
    camid: int


def resolve_root(root: str | Path, folder_names: Sequence[str], required: Sequence[str], dataset: str) -> Path:
    """Find the data set folder: ``root`` itself or ``root/<name>`` for one of its usual names.

    ``required`` are entries (folders or files) that the data set folder must hold. The error
    lists every place looked at and what was expected there, because a wrong ``--root`` is the
    most common set-up mistake.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"{dataset}: root {root} does not exist (expected a folder holding "
            f"{', '.join(required)}, or a parent of one named {' / '.join(folder_names)})"
        )
    candidates = [root] + [root / name for name in folder_names]
    for candidate in candidates:
        if candidate.is_dir() and all((candidate / entry).exists() for entry in required):
            return candidate

    def state(c: Path) -> str:
        if c.is_dir():
            missing = [entry for entry in required if not (c / entry).exists()]
            return f"{c} (lacks {', '.join(missing)})"
        return f"{c} ({'not a folder' if c.exists() else 'absent'})"

    looked = "; ".join(state(c) for c in candidates)
    raise FileNotFoundError(f"{dataset}: no folder holding {', '.join(required)} found; looked in: {looked}")


def relabel(items: Iterable[Item]) -> list[Item]:
    """Map the identities of ``items`` to 0..N-1 in sorted order of the original ids (stable, deterministic)."""
    items = list(items)
    mapping = {pid: label for label, pid in enumerate(sorted({it.pid for it in items}))}
    return [Item(it.path, mapping[it.pid], it.camid) for it in items]


class ReIDDataset:
    """A train / query / gallery split with the summary counts the model and engine need.

    ``required`` are the splits that must not be empty (the fixed layouts need all three); readers of
    the user's own data require none at read time, and the engine asks for the ones it uses
    (``require``): training needs ``train``, evaluation ``query`` and ``gallery``.
    """

    name = "reid"

    def __init__(
        self, train: list[Item], query: list[Item], gallery: list[Item], root: Path, required: Sequence[str] = SPLITS
    ):
        self.root = Path(root)
        self.train = train
        self.query = query
        self.gallery = gallery
        self.require(required, f"the {self.name} layout")

    def split_source(self, split: str) -> str:
        """Where the images of ``split`` come from, for messages."""
        return f"the {split} split under {self.root}"

    def describe(self, item: Item) -> str:
        """Where ``item`` came from, for messages (the image path; a manifest adds its line)."""
        return f"image {item.path}"

    def require(self, splits: Sequence[str], purpose: str) -> None:
        """ValueError naming the first of ``splits`` that holds no image, and what needed it."""
        for split in splits:
            if not getattr(self, split):
                raise ValueError(
                    f"{self.name}: {self.split_source(split)} is empty (no usable images found); {purpose} needs it"
                )

    def train_fingerprint(self) -> str | None:
        """16 hex digits of the sha256 of the training split's (file name, identity) pairs, sorted: the same
        training images in any layout or folder give the same value. A model records it (never a path) so
        that evaluation can tell whether it was trained on a data set. None without a training split."""
        if not self.train:
            return None
        digest = hashlib.sha256()
        for name, pid in sorted((os.path.basename(it.path), it.pid) for it in self.train):
            digest.update(f"{name}\t{pid}\n".encode())
        return digest.hexdigest()[:16]

    def queries_without_gallery(self) -> list[Item]:
        """The query images whose identity has no image in the gallery: they can never be matched, and
        evaluation counts them among the invalid queries."""
        gallery_pids = {it.pid for it in self.gallery}
        return [it for it in self.query if it.pid not in gallery_pids]

    def check_queries(self, strict: bool = False) -> str | None:
        """None when every query identity is in the gallery; otherwise a note saying how many queries are
        not and naming the first, or, with ``strict``, that note as a ValueError."""
        missing = self.queries_without_gallery()
        if not missing:
            return None
        pids = sorted({it.pid for it in missing})
        note = (
            f"{self.name} at {self.root}: {len(missing)} of {len(self.query)} queries ({len(pids)} identities, "
            f"e.g. identity {missing[0].pid}, {self.describe(missing[0])}) have no image of their identity "
            f"in the gallery"
        )
        if strict:
            raise ValueError(note + " (data.strict_queries is on; turn it off to evaluate the others)")
        return note + "; evaluation counts them as invalid queries"

    @property
    def num_train_pids(self) -> int:
        return len({it.pid for it in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({it.camid for it in self.train})

    @property
    def num_train_imgs(self) -> int:
        return len(self.train)

    def summary(self) -> str:
        def row(split: str, items: list[Item]) -> str:
            return (
                f"  {split:<8} {len({i.pid for i in items}):>6} ids {len(items):>7} images "
                f"{len({i.camid for i in items}):>3} cameras"
            )

        return "\n".join(
            [
                f"{self.name} at {self.root}",
                row("train", self.train),
                row("query", self.query),
                row("gallery", self.gallery),
            ]
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, train={len(self.train)}, query={len(self.query)}, "
            f"gallery={len(self.gallery)}, num_train_pids={self.num_train_pids})"
        )
