"""MSMT17 (V1 or V2) read from its list files.

Layout (as released):
    MSMT17_V1/train/<pid>/<name>.jpg       MSMT17_V2/mask_train_v2/<pid>/<name>.jpg
    MSMT17_V1/test/<pid>/<name>.jpg        MSMT17_V2/mask_test_v2/<pid>/<name>.jpg
    list_train.txt, list_val.txt           (paths relative to the train folder)
    list_query.txt, list_gallery.txt       (paths relative to the test folder)
Each list line is ``<relative path> <label>``, e.g. ``0000/0000_000_01_0303morning_0015_0.jpg 0``.
The label is the identity (train/val share one id space, 0..1040; query/gallery another, 0..3059).
The file name is ``<pid>_<index>_<camera>_<date+time>_<frame>_<...>.jpg``: its third field is the
1-based camera (01..15), made 0-based here. list_val.txt is a subset of the training identities held
out for validation; the paper's "32,621 training images of 1,041 identities" is train + val, i.e.
``combine_trainval=True``.
"""

from __future__ import annotations

from pathlib import Path

from .base import Item, ReIDDataset, relabel, resolve_root

VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")


def camid_from_name(path: Path, list_file: Path, line_no: int) -> int:
    fields = path.stem.split("_")
    if len(fields) < 3 or not fields[2].isdigit() or int(fields[2]) < 1:
        raise ValueError(
            f"{list_file}:{line_no}: cannot parse the camera from file name {path.name} "
            "(expected <pid>_<index>_<camera 01..15>_..., e.g. 0000_000_01_0303morning_0015_0.jpg)"
        )
    return int(fields[2]) - 1


def read_list(list_file: Path, image_dir: Path) -> list[Item]:
    items = []
    for line_no, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{list_file}:{line_no}: expected '<relative path> <label>', got {line!r}")
        rel, label = Path(parts[0]), int(parts[1])
        items.append(Item(str(image_dir / rel), label, camid_from_name(rel, list_file, line_no)))
    return items


class MSMT17(ReIDDataset):
    """MSMT17; ``combine_trainval=True`` trains on list_train + list_val (the paper's training set)."""

    name = "msmt17"

    def __init__(self, root: str | Path, combine_trainval: bool = False):
        data_dir = None
        errors = []
        for folder, (train_dir, test_dir) in VERSIONS.items():
            try:
                data_dir = resolve_root(root, (folder,), [train_dir, test_dir, *LISTS], f"{self.name} ({folder})")
            except FileNotFoundError as err:
                errors.append(str(err))
                continue
            break
        if data_dir is None:
            raise FileNotFoundError("; ".join(errors))
        train_images, test_images = data_dir / train_dir, data_dir / test_dir
        train = read_list(data_dir / "list_train.txt", train_images)
        if combine_trainval:
            train += read_list(data_dir / "list_val.txt", train_images)
        query = read_list(data_dir / "list_query.txt", test_images)
        gallery = read_list(data_dir / "list_gallery.txt", test_images)
        super().__init__(relabel(train), query, gallery, data_dir)
