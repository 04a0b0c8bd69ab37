"""Thumbnails of the report: every image the page shows, resized once and stored in the report folder.

Each source image is written at most once, under a name derived from its path, size and modification
time (so a report rewritten into the same folder reuses the thumbnails of unchanged images, and a
changed image gets a new one), to a temporary file beside it that is then renamed: a thumbnail is
either absent or complete. The SC-STN alignment of an image is the thumbnail resampled with the
image's theta by scstn_vcn.figures.resample_with_theta, as the demo's alignment figure draws it.

Size: a 96 x 48 WebP at quality 75 is 1-3 kB for a pedestrian crop, so a Market-1501 report (3,368
queries and the gallery images in their top-10 lists) stays within a few tens of MB.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, features

THUMB_HEIGHT = 96
THUMB_WIDTH = 48
QUALITY = 75
# WebP where Pillow has it (smaller at the same quality), JPEG otherwise; both open in every browser.
EXTENSION = ".webp" if features.check("webp") else ".jpg"
FOLDER = "thumbs"


def _source_key(path):
    try:
        stat = os.stat(path)
    except OSError:
        raise FileNotFoundError(f"image {path} does not exist (listed in the data set but missing on disk)") from None
    return f"{os.path.realpath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}"


def thumbnail_name(path, theta=None):
    """The file name (inside FOLDER) of `path`'s thumbnail, or of its alignment by `theta` (2, 3)."""
    key = _source_key(path)
    if theta is not None:
        key += "\0" + np.asarray(theta, dtype=np.float32).tobytes().hex()
    return hashlib.sha1(key.encode()).hexdigest()[:20] + ("-a" if theta is not None else "") + EXTENSION


def _fit(image):
    """`image` resized to fit THUMB_HEIGHT x THUMB_WIDTH, aspect kept."""
    scale = min(THUMB_HEIGHT / image.height, THUMB_WIDTH / image.width)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def _save(image, path):
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format="WEBP" if EXTENSION == ".webp" else "JPEG", quality=QUALITY)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _aligned(image, theta):
    import torch

    from scstn_vcn.figures import resample_with_theta

    raw = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    out = resample_with_theta(raw, torch.as_tensor(np.asarray(theta, dtype=np.float32))[None])[0]
    pixels = (out.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels)


def _write_one(folder, path, thetas):
    """The thumbnail of `path` and its alignments by each theta in `thetas`, where not yet on disk."""
    from scstn_vcn.data.image_dataset import read_image

    targets = [(thumbnail_name(path), None)] + [(thumbnail_name(path, t), t) for t in thetas]
    missing = [(name, t) for name, t in targets if not os.path.exists(os.path.join(folder, name))]
    if not missing:
        return 0
    image = _fit(read_image(path))
    for name, theta in missing:
        _save(image if theta is None else _aligned(image, theta), os.path.join(folder, name))
    return len(missing)


def write_thumbnails(report_folder, paths, alignments=(), workers=None):
    """Thumbnails of `paths` (each once) and the alignments [(path, theta (2, 3))] into
    report_folder/FOLDER. Returns the number of files written (existing ones are kept)."""
    folder = os.path.join(report_folder, FOLDER)
    os.makedirs(folder, exist_ok=True)
    jobs = {path: [] for path in dict.fromkeys(paths)}
    for path, theta in alignments:
        jobs.setdefault(path, []).append(theta)
    workers = workers or min(8, os.cpu_count() or 1)
    # Decoding and resizing release the GIL in Pillow, so threads overlap them.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(lambda item: _write_one(folder, item[0], item[1]), jobs.items()))


def crop_box(theta):
    """The quadrilateral of the source image that theta (2, 3) samples, as 4 (x, y) corners in fractions
    of the image's width and height (top-left, top-right, bottom-right, bottom-left of the output)."""
    theta = np.asarray(theta, dtype=np.float64)
    corners = np.array([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=np.float64)
    source = corners @ theta.T  # normalised [-1, 1] source coordinates (x, y)
    return [[round((x + 1) / 2, 4), round((y + 1) / 2, 4)] for x, y in source]
