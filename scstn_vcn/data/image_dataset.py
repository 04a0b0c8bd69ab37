"""A torch Dataset over (path, pid, camid) items."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset


def read_image(path: str) -> Image.Image:
    """Open ``path`` as an RGB image; errors name the path (they surface from DataLoader workers)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist (listed in the data set but missing on disk)") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path}: expected a readable JPEG/PNG ({err})") from err


class ImageDataset(Dataset):
    """Returns ``(image, pid, camid, index)``; ``index`` points back into ``items`` (and so to the path)."""

    def __init__(self, items: Sequence, transform: Callable | None = None):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, pid, camid = self.items[index][:3]
        image = read_image(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, pid, camid, index
