"""A data set as a folder per identity: ``<root>/<split>/<pid>/<image>``.

The layout that users' own preparation scripts and torchvision's ImageFolder write::

    my_data/train/0001/img_c1_0001.jpg     my_data/query/0042/c3_frame77.jpg
    my_data/train/0001/img_c2_0007.jpg     my_data/gallery/0042/c1_frame12.jpg

* ``<split>`` is ``train``, ``query`` or ``gallery``; any other folder there is an error (a misspelt split
  would otherwise be skipped). A split may be absent (see ``ManifestDataset``), but one that is there must
  hold identity folders, and each identity folder at least one image (as ImageFolder requires).
* ``<pid>`` is the folder's name, an integer (``0042`` and ``42`` are the same identity); ``-1`` is junk
  and dropped, as in Market-1501.
* The camera is read from the file name: the first ``c<digits>`` that does not follow a letter or a digit
  (``c3_frame77.jpg``, ``0002_c1s1_000451_00.jpg``, ``img_c12.png``), 1-based as in Market-1501's names
  (``c1`` is camera 0). **A file without one is a camera of its own**: such files are numbered, in
  reading order, from one past the highest named camera. Evaluation discards a query's gallery images
  of its own identity and camera (the standard protocol), so with cameras of their own nothing is
  discarded and every gallery image of the identity counts as a match. With a single named camera for
  everything, every match would be discarded; evaluation then stops with an error saying so.

Images are read in sorted order of the identity (as a number) and then of the file name, which for
zero-padded Market-style names is the Market-1501 reader's order. Training identities are relabelled
0..N-1, query and gallery identities kept.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import IMAGE_SUFFIXES, JUNK_PID, SPLITS, Item, ReIDDataset, relabel

CAMERA_PATTERN = re.compile(r"(?<![A-Za-z0-9])c(\d+)")


def camera_in_name(path: Path) -> int | None:
    """The 0-based camera of a file named with ``c<digits>`` (1-based), or None when the name has none."""
    match = CAMERA_PATTERN.search(path.stem)
    if match is None:
        return None
    camera = int(match.group(1))
    if camera < 1:
        raise ValueError(
            f"image {path}: camera c{match.group(1)} in its name; cameras in names are 1-based (c1, c2, ...) "
            "as in Market-1501"
        )
    return camera - 1


def _identity(folder: Path) -> int:
    try:
        pid = int(folder.name)
    except ValueError:
        raise ValueError(
            f"identity folder {folder}: its name is not an integer identity "
            "(expected <root>/<split>/<pid>/<image>, e.g. train/0042/img_c1.jpg)"
        ) from None
    if pid < JUNK_PID:
        raise ValueError(f"identity folder {folder}: identity {pid}; expected -1 (junk) or an identity >= 0")
    return pid


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")  # .ipynb_checkpoints, .DS_Store and the like


def read_split(folder: Path) -> list[tuple[Path, int]]:
    """(image path, pid) of one split folder, in the order described above, junk dropped."""
    entries = sorted((p for p in folder.iterdir() if _visible(p)), key=lambda p: p.name)
    stray = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if stray:
        raise ValueError(
            f"split folder {folder}: image {stray[0].name} lies directly in it; expected a folder per identity "
            f"({folder}/<pid>/<image>)"
        )
    identities = sorted(((_identity(p), p) for p in entries if p.is_dir()), key=lambda t: (t[0], t[1].name))
    if not identities:
        raise ValueError(f"split folder {folder}: holds no identity folder (expected {folder}/<pid>/<image>)")
    found = []
    for pid, identity_folder in identities:
        images = []
        for path in sorted(p for p in identity_folder.iterdir() if _visible(p)):
            if path.is_dir():
                raise ValueError(f"identity folder {identity_folder}: holds a folder {path.name}; expected images only")
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(path)
        if not images:
            raise ValueError(
                f"identity folder {identity_folder}: holds no image ({', '.join(IMAGE_SUFFIXES)} files expected)"
            )
        if pid != JUNK_PID:
            found += [(path, pid) for path in images]
    return found


class IdentityFolders(ReIDDataset):
    """``<root>/<split>/<pid>/<image>`` (see the module docstring)."""

    name = "folders"

    def __init__(self, root: str | Path):
        root = Path(root).expanduser()
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise FileNotFoundError(f"folders: root {root} {what} (expected {root}/<split>/<pid>/<image>)")
        unknown = [p.name for p in sorted(root.iterdir()) if p.is_dir() and _visible(p) and p.name not in SPLITS]
        if unknown:
            raise ValueError(
                f"folders: {root} holds the folder {unknown[0]!r}, which is no split; expected only "
                f"{', '.join(SPLITS)} (each holding a folder per identity)"
            )
        present = [split for split in SPLITS if (root / split).is_dir()]
        if not present:
            raise FileNotFoundError(
                f"folders: {root} holds none of the split folders {', '.join(SPLITS)} "
                f"(expected {root}/<split>/<pid>/<image>)"
            )
        read = {split: read_split(root / split) if split in present else [] for split in SPLITS}
        named = {split: [camera_in_name(path) for path, _ in items] for split, items in read.items()}
        next_camera = 1 + max((c for cams in named.values() for c in cams if c is not None), default=-1)
        lists = {}
        for split in SPLITS:
            items = []
            for (path, pid), camera in zip(read[split], named[split]):
                if camera is None:  # a camera of its own (see the module docstring)
                    camera, next_camera = next_camera, next_camera + 1
                items.append(Item(str(path), pid, camera))
            lists[split] = items
        super().__init__(relabel(lists["train"]), lists["query"], lists["gallery"], root, required=())

    def split_source(self, split: str) -> str:
        return f"the split folder {self.root / split}"
