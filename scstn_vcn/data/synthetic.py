"""``make_synthetic``: a small, deterministic ReID data set in the Market-1501 layout.

Why synthetic: no real data set can be downloaded on these machines, yet the engine, the tests and
a CPU demo need images whose identities are defined by what the paper is about:

* **Vertical order matters.** Identities come in *swap pairs*: pids (2j+1, 2j+2) of a split wear the
  same two garments (colour + texture), one with garment A on top and B below, the other the other
  way round; everything else (hair, skin, shoes, bag, build) is shared. Upper and lower body have the
  same size, so the two have (nearly) the same colour histogram and mean colour: global average/max
  pooling sees the same thing, only a feature that keeps the vertical layout (VCN) separates them.
  The pairs are listed in the marker file (``swap_pairs``).
* **Misalignment.** Every image has detection error: the person is scaled by 0.75-1.25 and shifted
  inside the box, so the same part lands at different heights (what SC-STN corrects). The knob
  ``detection_error`` sets how much (``synthetic_render.detection_error_box``: scale in [1 - E, 1 + E],
  shifts up to 0.4 E of the height and 0.48 E of the width); the default 0.25 is the set above, 0 a
  perfect detector. It applies to every person image (train, query, gallery, distractors) alike.
* **Cameras and views.** Each camera has its own background, clutter, colour cast, brightness, blur
  and noise; each image a front / back / side view (bag visibility and body width change).
* **Market conventions.** ``bounding_box_train/``, ``query/``, ``bounding_box_test/``; names like
  ``0002_c1s1_000451_00.jpg``; gallery distractors with identity 0 (random people outside every
  split) and junk with identity -1 (background only, or a person cut off by a bad box).
* **The user's layouts.** ``layout="manifest"`` adds ``manifest.csv`` (scstn_vcn.data.manifest) listing
  the same files; ``layout="folders"`` writes the same files as ``<split>/<pid>/<name>``
  (scstn_vcn.data.identity_folders: ``train``, ``query``, ``gallery``, junk under ``gallery/-1``). The
  images are the same bytes in every layout, and each layout's reader gives the same lists.

Same parameters and seed -> byte-identical files (every image draws from its own seeded stream).
The set is written into a temporary sibling folder and renamed into place at the end, with the
marker ``synthetic.json`` (parameters, counts, pairs) written last, so a half-written set never
looks complete; an existing set with the same marker is reused as is.
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from .folder_layout import SPLIT_FOLDERS, MarketLayoutDataset
from .manifest import DEFAULT_FILE as MANIFEST_FILE
from .synthetic_render import (
    DEFAULT_DETECTION_ERROR,
    Camera,
    Look,
    detection_error_box,
    random_camera,
    random_look,
    render,
)

MARKER = "synthetic.json"
FORMAT_VERSION = 1
# Stream ids so that each kind of draw has its own reproducible random stream.
_DESIGN, _CAMERA, _TRAIN, _QUERY, _GALLERY, _DISTRACTOR, _JUNK = range(7)
# Where the images go: Market-1501's folders (also with a manifest listing them), or a folder per identity.
LAYOUTS = ("market", "manifest", "folders")


class SyntheticReID(MarketLayoutDataset):
    """Reader for a folder written by ``make_synthetic`` (the Market-1501 layout)."""

    name = "synthetic"
    folder_names = ("synthetic",)


def design_identities(n: int, rng: np.random.Generator) -> list[Look]:
    """``n`` looks, consecutive ones forming swap pairs; no two pairs use the same pair of garments."""
    looks: list[Look] = []
    used: set[frozenset] = set()
    while len(looks) < n:
        look = random_look(rng)
        key = frozenset([look.upper, look.lower])
        if key in used:
            continue
        used.add(key)
        looks.append(look)
        if len(looks) < n:
            looks.append(look.swapped())
    return looks


def _split_sizes(num_identities: int, train_fraction: float, num_test: int | None = None) -> tuple[int, int]:
    if num_test is not None:
        # Training identities first: with the same number of them, the training images do not
        # depend on how many test identities follow (looks are drawn in order, images per pid).
        return num_identities - num_test, num_test
    n_train = 2 * int(round(num_identities * train_fraction / 2))  # even: whole swap pairs
    n_train = min(max(n_train, 2), num_identities - 2)
    return n_train, num_identities - n_train


def _cameras_for(rng: np.random.Generator, num_cameras: int) -> np.ndarray:
    """The cameras an identity passes (at least two, so cross-camera matches exist)."""
    m = int(rng.integers(2, num_cameras + 1))
    return rng.permutation(num_cameras)[:m]


def _params(**kwargs) -> dict:
    return {k: kwargs[k] for k in sorted(kwargs)}


def read_marker(root: str | Path) -> dict | None:
    path = Path(root) / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def make_synthetic(
    root: str | Path,
    num_identities: int = 240,
    seed: int = 0,
    *,
    train_fraction: float = 0.5,
    images_per_identity: int = 12,
    gallery_per_identity: int = 10,
    query_per_identity: int = 2,
    num_cameras: int = 6,
    num_distractors: int = 100,
    num_junk: int = 40,
    height: int = 128,
    width: int = 64,
    jpeg_quality: int = 90,
    num_test_identities: int | None = None,
    detection_error: float = DEFAULT_DETECTION_ERROR,
    layout: str = "market",
    overwrite: bool = False,
    workers: int = 0,
    verbose: bool = False,
) -> Path:
    """Write a synthetic ReID set to ``root`` (the data set folder itself) and return ``root``.

    Parameters:
        num_identities: identities in all; ``train_fraction`` of them (rounded to whole swap pairs)
            train, the others are the query / gallery identities (as Market-1501 splits 751 / 750).
        seed: everything is drawn from it; same parameters + seed -> byte-identical files.
        images_per_identity: training images per training identity.
        gallery_per_identity / query_per_identity: test images per test identity; queries come from
            distinct cameras and every camera of the identity also appears in its gallery, so each
            query has a match in another camera.
        num_cameras: cameras (2..9, names use one digit like Market's c1..c6).
        num_distractors / num_junk: gallery images of identity 0 (people of no split) and -1 (junk).
        height, width: image size; jpeg_quality: JPEG quality of the files.
        num_test_identities: how many of the ``num_identities`` are test identities (even, so the
            training split is whole swap pairs; replaces ``train_fraction``). A larger test split
            makes rank-1 / mAP less noisy; the training images stay the same for the same number of
            training identities.
        detection_error: how badly the "detector" frames each person, in [0, 0.5] (see
            ``synthetic_render.detection_error_box``); 0.25 (the default) is the set's usual error.
        layout: "market" (Market-1501's folders, read as ``synthetic``), "manifest" (the same plus
            ``manifest.csv``, read as ``manifest``) or "folders" (``<split>/<pid>/<name>``, read as
            ``folders``); the images are the same in all three.
        overwrite: replace an existing non-empty ``root`` that is not this exact set. Without it such
            a folder is refused (FileExistsError); an existing set with the same parameters is reused.
        workers: processes drawing images (0 or 1: this process); the files do not depend on it.
        verbose: print what was done.
    The defaults (240 identities: 120 train x 12 images, 120 test x (2 query + 10 gallery), 100
    distractors, 40 junk: about 3,000 128x64 images) suit a CPU demo and take a few seconds.
    """
    if not 2 <= num_cameras <= 9:
        raise ValueError(f"num_cameras must be in 2..9 (one digit in Market names), got {num_cameras}")
    if num_identities < 4:
        raise ValueError(
            f"num_identities must be >= 4 (two swap pairs: one for train, one for test), got {num_identities}"
        )
    if not 1 <= query_per_identity <= num_cameras or gallery_per_identity < 2 or images_per_identity < 1:
        raise ValueError(
            "need 1 <= query_per_identity <= num_cameras, gallery_per_identity >= 2 and "
            f"images_per_identity >= 1, got {query_per_identity}, {gallery_per_identity}, "
            f"{images_per_identity}"
        )
    if num_test_identities is not None and (
        num_test_identities % 2 or not 2 <= num_test_identities <= num_identities - 2
    ):
        raise ValueError(
            "num_test_identities must be even and leave at least two training identities "
            f"(2..{num_identities - 2} of num_identities={num_identities}), got {num_test_identities}"
        )
    detection_error_box(detection_error)  # checks the range
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    extra = {}
    # The new knobs enter the marker only when used, so the default set keeps its bytes.
    if num_test_identities is not None:
        extra["num_test_identities"] = int(num_test_identities)
    if float(detection_error) != DEFAULT_DETECTION_ERROR:
        extra["detection_error"] = float(detection_error)
    if layout != "market":
        extra["layout"] = layout
    params = _params(
        num_identities=num_identities,
        seed=seed,
        train_fraction=train_fraction,
        images_per_identity=images_per_identity,
        gallery_per_identity=gallery_per_identity,
        query_per_identity=query_per_identity,
        num_cameras=num_cameras,
        num_distractors=num_distractors,
        num_junk=num_junk,
        height=height,
        width=width,
        jpeg_quality=jpeg_quality,
        **extra,
    )
    root = Path(root).expanduser().absolute()  # absolute: the temp folder goes beside it, even for '.'
    if root.exists():
        marker = read_marker(root)
        if (
            marker is not None
            and marker.get("version") == FORMAT_VERSION
            and marker.get("params") == params
            and not overwrite
        ):
            if verbose:
                print(f"{root} already holds this synthetic set (same parameters); reusing it")
            return root
        if not root.is_dir():
            raise FileExistsError(f"{root} exists and is not a folder; expected a folder for the synthetic set")
        if any(root.iterdir()) and not overwrite:
            why = "holds a synthetic set with other parameters" if marker else f"is not a synthetic set (no {MARKER})"
            raise FileExistsError(
                f"{root} is not empty and {why}; pass overwrite=True (--overwrite) to replace it "
                "or choose another folder"
            )
    start = time.perf_counter()
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        info = _write(tmp, params, workers)
        # The marker goes last: its presence means the set is complete.
        (tmp / MARKER).write_text(
            json.dumps({"format": "scstn-vcn-synthetic", "version": FORMAT_VERSION, "params": params, **info}, indent=1)
        )
        if root.exists():
            marker = read_marker(root)
            if (
                marker is not None
                and marker.get("params") == params
                and marker.get("version") == FORMAT_VERSION
                and not overwrite
            ):
                shutil.rmtree(tmp)  # another process finished the same set meanwhile: keep theirs
                return root
            if any(root.iterdir()) and not overwrite:  # something else appeared there meanwhile
                raise FileExistsError(f"{root} was filled by someone else while the synthetic set was written")
            shutil.rmtree(root) if any(root.iterdir()) else root.rmdir()
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if verbose:
        # The time stays out of the marker so that the whole folder is byte-identical per seed.
        print(f"wrote {sum(info['counts'].values())} images to {root} in {time.perf_counter() - start:.1f} s")
    return root


class _Job(NamedTuple):
    """One image to draw and save; everything it needs, so jobs can run in any order or process."""

    path: Path
    rng_key: tuple[int, ...]
    look: Look | None
    camera: Camera
    render_kwargs: dict


def _run_job(job: _Job, height: int, width: int, quality: int) -> None:
    img = render(np.random.default_rng(list(job.rng_key)), job.look, job.camera, height, width, **job.render_kwargs)
    Image.fromarray(img).save(job.path, quality=quality)


def _plan(out: Path, p: dict) -> tuple[list[_Job], dict]:
    """Every image of the set, in a fixed order (the order gives the frame numbers in the names)."""
    seed, C = p["seed"], p["num_cameras"]
    n_train, n_test = _split_sizes(p["num_identities"], p["train_fraction"], p.get("num_test_identities"))
    scale_range, shift = detection_error_box(p.get("detection_error", DEFAULT_DETECTION_ERROR))
    box = {"scale_range": scale_range, "shift": shift}  # every person image, of every split
    looks = design_identities(n_train + n_test, np.random.default_rng([seed, _DESIGN]))
    cameras = [random_camera(np.random.default_rng([seed, _CAMERA, c])) for c in range(C)]
    counts = {"train": 0, "query": 0, "gallery": 0, "distractors": 0, "junk": 0}
    jobs: list[_Job] = []
    manifest: list[tuple[str, int, int, str]] = []  # (relative path, pid, 0-based camera, split) per image

    def add(split: str, kind: str, pid: int, cam: int, stream: int, key: int, look: Look | None, **kw) -> None:
        frame = len(jobs) + 1
        name = f"{pid:04d}_c{cam + 1}s1_{frame:06d}_00.jpg" if pid >= 0 else f"-1_c{cam + 1}s1_{frame:06d}_00.jpg"
        if p.get("layout") == "folders":
            path = out / split / (f"{pid:04d}" if pid >= 0 else "-1") / name
        else:
            path = out / SPLIT_FOLDERS[split] / name
        jobs.append(_Job(path, (seed, stream, max(pid, 0), key), look, cameras[cam], kw))
        manifest.append((path.relative_to(out).as_posix(), pid, cam, split))
        counts[kind] += 1

    for pid in range(1, n_train + 1):  # training identities: pids 1..n_train
        cams = _cameras_for(np.random.default_rng([seed, _TRAIN, pid]), C)
        for k in range(p["images_per_identity"]):
            add("train", "train", pid, int(cams[k % len(cams)]), _TRAIN, k + 1, looks[pid - 1], **box)
    for pid in range(n_train + 1, n_train + n_test + 1):  # test identities follow
        cams = _cameras_for(np.random.default_rng([seed, _QUERY, pid]), C)
        for k, cam in enumerate(cams[: p["query_per_identity"]]):  # distinct cameras
            add("query", "query", pid, int(cam), _QUERY, k + 1, looks[pid - 1], **box)
        for k in range(p["gallery_per_identity"]):  # cycles through all of its cameras
            add("gallery", "gallery", pid, int(cams[k % len(cams)]), _GALLERY, k + 1, looks[pid - 1], **box)
    for k in range(p["num_distractors"]):  # identity 0: people seen once, in no split
        rng = np.random.default_rng([seed, _DISTRACTOR, k])
        add("gallery", "distractors", 0, int(rng.integers(C)), _DISTRACTOR, k, random_look(rng), **box)
    for k in range(p["num_junk"]):  # identity -1: background only, or a person cut off by a bad box
        rng = np.random.default_rng([seed, _JUNK, k])
        cam = int(rng.integers(C))
        if k % 2:
            add("gallery", "junk", -1, cam, _JUNK, k, None)
        else:
            # A box far too tight, whatever the detection error level: junk by construction.
            add("gallery", "junk", -1, cam, _JUNK, k, random_look(rng), scale_range=(1.6, 2.2), shift=(0.35, 0.4))
    pairs = [[a, a + 1] for start, n in ((1, n_train), (n_train + 1, n_test)) for a in range(start, start + n - 1, 2)]
    info = {"counts": counts, "num_train_ids": n_train, "num_test_ids": n_test, "swap_pairs": pairs}
    return jobs, info, manifest


def _write_manifest(path: Path, rows: list[tuple[str, int, int, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "pid", "camid", "split"])
        writer.writerows(rows)


def _write(out: Path, p: dict, workers: int) -> dict:
    jobs, info, manifest = _plan(out, p)
    for folder in sorted({job.path.parent for job in jobs}):
        folder.mkdir(parents=True, exist_ok=True)
    if p.get("layout") == "manifest":
        # In each split's file-name order, the order in which the Market-1501 reader lists them.
        order = {split: i for i, split in enumerate(SPLIT_FOLDERS)}
        _write_manifest(out / MANIFEST_FILE, sorted(manifest, key=lambda row: (order[row[3]], row[0])))
    run = partial(_run_job, height=p["height"], width=p["width"], quality=p["jpeg_quality"])
    if workers > 1:
        # Each image has its own random stream, so the output does not depend on the process count.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as pool:
            list(pool.map(run, jobs, chunksize=64))
    else:
        for job in jobs:
            run(job)
    return info
