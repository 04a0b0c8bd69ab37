"""Several data sets trained on as one (torchreid's and fast-reid's combined training sets).

The training split is the union of the parts' training splits with identities and cameras kept apart:
part i's training identities (0..N_i-1 after relabelling) become ``offset_i + pid`` with ``offset_i`` the
number of training identities of the parts before it, so the classifier has one class per identity of
the union (sum of N_i) and P x K sampling draws from all of them; its cameras become
``camera offset_i + camid`` with the camera offset one past the highest camera of the parts before it.
Query and gallery stay per part: each part is evaluated on its own (``parts``), since identity numbers
of different data sets say nothing about each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .base import Item, ReIDDataset


class CombinedDataset(ReIDDataset):
    """The union of ``parts``' training splits (see the module docstring); ``parts`` keeps the data sets."""

    name = "combined"

    def __init__(self, parts: Sequence[ReIDDataset]):
        if not parts:
            raise ValueError("combined data set: no data set given")
        self.parts = list(parts)
        self.offsets: list[tuple[int, int]] = []  # (identity offset, camera offset) of each part
        train: list[Item] = []
        pid_offset = cam_offset = 0
        for part in self.parts:
            part.require(["train"], f"training on {part.name} with {len(parts) - 1} other data set(s)")
            self.offsets.append((pid_offset, cam_offset))
            train += [Item(it.path, pid_offset + it.pid, cam_offset + it.camid) for it in part.train]
            pid_offset += part.num_train_pids
            cams = [it.camid for split in (part.train, part.query, part.gallery) for it in split]
            cam_offset += max(cams) + 1
        root = Path(self.parts[0].root) if len(self.parts) == 1 else Path("+".join(str(p.root) for p in self.parts))
        super().__init__(train, [], [], root, required=("train",))

    def summary(self) -> str:
        return "\n".join(part.summary() for part in self.parts)

    def split_source(self, split: str) -> str:
        names = " + ".join(part.name for part in self.parts)
        return f"the {split} split of the combined data set ({names})"
