"""A data set listed in a CSV manifest: the user's own images in any folder layout.

The manifest is a CSV file with a header naming the columns ``path``, ``pid``, ``camid`` and ``split``
(in any order; other columns are ignored), one line per image::

    path,pid,camid,split
    cam1/2024-05-01/000123.jpg,17,0,train
    /data/crops/query/a.png,42,3,query

* ``path``: the image, relative to the manifest's folder, or absolute. It must exist; a path listed
  twice is an error (the same image in two splits would be matched with itself).
* ``pid``: an integer identity. -1 marks junk (dropped, as in Market-1501); 0 is an ordinary identity
  (Market-1501 uses it for gallery distractors: people no query is looking for).
* ``camid``: a non-negative integer camera, used as is. Evaluation discards, for each query, the gallery
  images of its identity taken by its own camera (the standard protocol), so give every image a camera
  of its own when the cameras are unknown.
* ``split``: ``train``, ``query`` or ``gallery``. A split may be absent (a manifest of query and gallery
  images only is an evaluation target; one of training images only a training set); the engine refuses
  to train without ``train`` images or to evaluate without ``query`` and ``gallery`` ones.

As every reader does, training identities are relabelled 0..N-1 (in sorted order of the ids) and the
query and gallery keep theirs. Items keep the manifest's order within each split. Every problem is a
ValueError naming the manifest and the line.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from .base import JUNK_PID, SPLITS, Item, ReIDDataset, relabel

COLUMNS = ("path", "pid", "camid", "split")
DEFAULT_FILE = "manifest.csv"  # looked for when the root is a folder


def resolve_manifest(root: str | Path) -> Path:
    """The manifest file: ``root`` itself, or ``root/manifest.csv`` when ``root`` is a folder."""
    path = Path(root).expanduser()
    if path.is_dir():
        if (path / DEFAULT_FILE).is_file():
            return path / DEFAULT_FILE
        raise FileNotFoundError(
            f"manifest: {path} is a folder without a {DEFAULT_FILE}; expected a CSV file with the header "
            f"{','.join(COLUMNS)} (or a folder holding one named {DEFAULT_FILE})"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"manifest: {path} does not exist (expected a CSV file with the header {','.join(COLUMNS)})"
        )
    return path


def _integer(value: str | None, column: str, where: str) -> int:
    text = (value or "").strip()
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{where}: {column} {text!r} is not an integer") from None


def read_manifest(manifest: Path) -> tuple[dict[str, list[Item]], dict[str, int]]:
    """({split: items in file order}, {path: line number}) of a manifest, every line checked."""
    splits: dict[str, list[Item]] = {split: [] for split in SPLITS}
    lines: dict[str, int] = {}
    folder = manifest.parent
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise ValueError(
                    f"{manifest}:1: the header lacks the column(s) {', '.join(missing)}; expected "
                    f"{','.join(COLUMNS)} (in any order, other columns ignored), got {','.join(header) or 'nothing'}"
                )
            reader.fieldnames = header
            for row in reader:
                line = reader.line_num
                where = f"{manifest}:{line}"
                if not any((v or "").strip() for k, v in row.items() if k is not None):
                    continue  # a blank line
                raw_path = (row["path"] or "").strip()
                if not raw_path:
                    raise ValueError(f"{where}: the path is empty")
                pid = _integer(row["pid"], "pid", where)
                camid = _integer(row["camid"], "camid", where)
                split = (row["split"] or "").strip().lower()
                if split not in splits:
                    raise ValueError(f"{where}: unknown split {row['split']!r}; expected one of {', '.join(SPLITS)}")
                if pid < JUNK_PID:
                    raise ValueError(f"{where}: pid {pid}; expected -1 (junk) or an identity >= 0")
                if camid < 0:
                    raise ValueError(f"{where}: camid {camid}; expected a camera >= 0")
                path = os.path.normpath(folder / raw_path)  # an absolute raw_path stays as it is
                if path in lines:
                    raise ValueError(f"{where}: {raw_path} is listed again (first on line {lines[path]})")
                if not os.path.isfile(path):
                    what = "is a folder" if os.path.isdir(path) else "does not exist"
                    raise ValueError(f"{where}: image {path} {what}")
                lines[path] = line
                if pid != JUNK_PID:
                    splits[split].append(Item(path, pid, camid))
    except UnicodeDecodeError as error:
        raise ValueError(f"{manifest}: not a UTF-8 text file ({error}); expected a CSV manifest") from None
    except csv.Error as error:
        raise ValueError(f"{manifest}: not a readable CSV file ({error})") from None
    return splits, lines


class ManifestDataset(ReIDDataset):
    """A data set from a CSV manifest (see the module docstring); ``root`` is the CSV file or its folder."""

    name = "manifest"

    def __init__(self, root: str | Path):
        self.manifest = resolve_manifest(root)
        splits, self._lines = read_manifest(self.manifest)
        if not self._lines:
            raise ValueError(f"{self.manifest}: lists no image (expected a line per image after the header)")
        super().__init__(relabel(splits["train"]), splits["query"], splits["gallery"], self.manifest, required=())

    def split_source(self, split: str) -> str:
        return f"the {split} split of {self.manifest} (lines with split={split})"

    def describe(self, item: Item) -> str:
        return f"{self.manifest}:{self._lines.get(item.path, '?')} ({item.path})"
