"""Features on disk: one memory-mappable ``.npy`` per branch with the items' metadata beside it, written
in shards that a resumed (or a distributed) run does not recompute.

A finished feature folder holds

    features.json      the manifest: format, version, number of items, branches (dim, dtype, file)
    <branch>.npy       (N, D) float32 or float16, one per branch ("global.npy", "spatial.npy")
    pids.npy           (N,) int64 identities (-1 where unknown)
    camids.npy         (N,) int64 0-based cameras (-1 where unknown)
    paths.txt          N lines, the items' image paths (UTF-8)

``open_features(folder)`` maps the arrays read-only (copy-on-write pages of the files: reading them
costs page cache, not the process's anonymous memory), so a gallery of millions is read a block at a
time by whoever slices it.

Writing (``FeatureStoreWriter``). The item list (paths, pids, camids) is known before extraction, so the
arrays are created at their full size under temporary names (``<branch>.npy.partial``, sparse files)
and the items are cut into shards of ``shard_size`` rows. A shard's rows are written into the partial
arrays, flushed to disk, then its marker ``shards/<index>.json`` is written (atomically): a shard with
a marker is done and a resumed run skips it. Several processes (torchrun ranks) write disjoint shards
of the same partial files. ``finish()`` checks every marker, renames the partial arrays to their
names and writes ``features.json`` last, so a folder with a manifest is complete and a folder without
one is never mistaken for features.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

FORMAT = "scstn-vcn-features"
VERSION = 1
MANIFEST = "features.json"
PLAN = "plan.json"
SHARD_FOLDER = "shards"
DTYPES = {"float32": np.float32, "float16": np.float16}
DEFAULT_SHARD_SIZE = 8192


class FeatureStoreError(ValueError):
    """A feature folder or file that is not what it should be (the message names it)."""


def write_atomically(path: str, write, mode: str = "w") -> None:
    """write(handle) into a temporary file beside ``path``, then rename: ``path`` is never half-written."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomically(path: str, payload) -> None:
    write_atomically(path, lambda handle: json.dump(payload, handle, indent=1))


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise FeatureStoreError(f"{path}: no such file ({what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FeatureStoreError(f"{path}: not valid JSON ({what}): {error}") from None
    if not isinstance(data, dict):
        raise FeatureStoreError(f"{path}: expected a JSON object ({what})")
    return data


def check_dtype(dtype) -> str:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise FeatureStoreError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return name


def map_array(path: str, expected_shape=None, expected_dtype=None) -> np.ndarray:
    """A .npy file memory-mapped (copy-on-write: writable for torch.from_numpy, never written back);
    FeatureStoreError naming the file when it is missing, not a plain .npy, or of another shape/dtype."""
    if not os.path.isfile(path):
        raise FeatureStoreError(f"{path}: no such file")
    try:
        array = np.load(path, mmap_mode="c", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise FeatureStoreError(f"{path}: not a readable .npy array: {error}") from None
    if expected_dtype is not None and array.dtype != np.dtype(expected_dtype):
        raise FeatureStoreError(f"{path}: dtype {array.dtype}, expected {np.dtype(expected_dtype)}")
    if expected_shape is not None and tuple(array.shape) != tuple(expected_shape):
        raise FeatureStoreError(f"{path}: shape {tuple(array.shape)}, expected {tuple(expected_shape)}")
    return array


@dataclass
class FeatureSet:
    """Features of N items: ``feats`` {branch: (N, D) memory-mapped array}, ``pids`` and ``camids`` (N,)
    int64, and the folder they came from (``paths`` reads paths.txt on demand)."""

    folder: str
    feats: dict
    pids: np.ndarray
    camids: np.ndarray
    manifest: dict = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return int(self.pids.shape[0])

    @property
    def branches(self) -> list[str]:
        return list(self.feats)

    @property
    def paths(self) -> list[str]:
        return read_paths(os.path.join(self.folder, "paths.txt"), self.num_items)


def read_paths(path: str, count: int) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != count:
        raise FeatureStoreError(f"{path}: {len(lines)} paths, expected {count} (one per item)")
    return lines


def open_features(folder: str, branches: Sequence[str] | None = None) -> FeatureSet:
    """The finished feature folder ``folder`` (see the module docstring), arrays memory-mapped; every
    array's shape and dtype is checked against the manifest. An unfinished folder (an extraction that was
    interrupted) raises FeatureStoreError naming its missing shards."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FeatureStoreError(f"{folder}: no such feature folder")
    manifest_path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(manifest_path):
        if os.path.isfile(os.path.join(folder, PLAN)):
            plan = _read_json(os.path.join(folder, PLAN), "the plan of an unfinished extraction")
            missing = missing_shards(folder, int(plan["num_shards"]))
            shown = ", ".join(shard_marker(folder, s) for s in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise FeatureStoreError(
                f"{folder}: the extraction did not finish ({len(missing)} of {plan['num_shards']} shards missing: "
                f"{shown}); run the same extract command again to resume it"
            )
        raise FeatureStoreError(f"{folder}: not a feature folder (no {MANIFEST}; write one with `scstn-vcn extract`)")
    manifest = _read_json(manifest_path, "feature manifest")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise FeatureStoreError(
            f"{manifest_path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
            f"expected {FORMAT!r} version {VERSION}"
        )
    n = int(manifest["num_items"])
    known = manifest["branches"]
    wanted = list(known) if branches is None else list(branches)
    unknown = [b for b in wanted if b not in known]
    if unknown or not wanted:
        raise FeatureStoreError(f"{folder}: branches {unknown or wanted} asked for, the folder holds {list(known)}")
    feats = {}
    for name in wanted:
        spec = known[name]
        path = os.path.join(folder, spec["file"])
        feats[name] = map_array(path, (n, int(spec["dim"])), DTYPES[check_dtype(spec["dtype"])])
    pids = np.asarray(map_array(os.path.join(folder, "pids.npy"), (n,), np.int64))
    camids = np.asarray(map_array(os.path.join(folder, "camids.npy"), (n,), np.int64))
    return FeatureSet(folder, feats, pids, camids, manifest)


def shard_marker(folder: str, shard: int) -> str:
    return os.path.join(folder, SHARD_FOLDER, f"{shard:06d}.json")


def missing_shards(folder: str, num_shards: int) -> list[int]:
    return [s for s in range(num_shards) if not os.path.isfile(shard_marker(folder, s))]


def _plan_id(paths: Sequence[str], pids: np.ndarray, camids: np.ndarray) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.encode("utf-8") + b"\n")
    digest.update(np.ascontiguousarray(pids, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(camids, dtype=np.int64).tobytes())
    return digest.hexdigest()


class FeatureStoreWriter:
    """Writes the features of a known list of items into ``folder`` shard by shard (module docstring).

    ``FeatureStoreWriter(folder, paths, dims, dtype="float32", pids=None, camids=None, shard_size=8192,
    extra=None)``; ``prepare()`` creates the folder, or checks that an unfinished one was started for the
    same items, branches and dtype (so it can be resumed); ``shard_rows(s)`` is shard s's row range,
    ``pending(rank, world_size)`` the shards without a marker that this process writes (every
    ``world_size``-th), ``write_shard(s, {branch: (rows, D) array})`` writes one, and ``finish()`` checks
    and completes the folder. In a distributed run one process calls ``prepare()`` and ``finish()``, the
    others ``open()`` after the first prepared.
    """

    def __init__(self, folder, paths, dims: Mapping[str, int], dtype="float32", pids=None, camids=None, **options):
        self.folder = os.fspath(folder)
        self.paths = [os.fspath(p) for p in paths]
        n = len(self.paths)
        if n < 1:
            raise FeatureStoreError("no items to extract (the image list is empty)")
        bad = next((p for p in self.paths if "\n" in p or "\r" in p), None)
        if bad is not None:
            raise FeatureStoreError(f"image path {bad!r} contains a line break; paths.txt holds one path a line")
        self.pids = np.full(n, -1, np.int64) if pids is None else np.asarray(pids, dtype=np.int64).reshape(-1)
        self.camids = np.full(n, -1, np.int64) if camids is None else np.asarray(camids, dtype=np.int64).reshape(-1)
        for label, array in (("pids", self.pids), ("camids", self.camids)):
            if array.shape[0] != n:
                raise FeatureStoreError(f"{label} has {array.shape[0]} entries, expected {n} (one per path)")
        self.dims = {str(name): int(dim) for name, dim in dims.items()}
        if not self.dims or any(d < 1 for d in self.dims.values()):
            raise FeatureStoreError(f"dims must give each branch a positive dimension, got {dict(dims)}")
        self.dtype = check_dtype(dtype)
        shard_size = options.pop("shard_size", DEFAULT_SHARD_SIZE)
        if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1:
            raise FeatureStoreError(f"shard_size must be a positive integer, got {shard_size!r}")
        self.shard_size = shard_size
        self.extra = dict(options.pop("extra", None) or {})
        if options:
            raise TypeError(f"unknown options {sorted(options)}")
        self.num_shards = -(-n // shard_size)
        self.plan = {
            "format": FORMAT,
            "version": VERSION,
            "num_items": n,
            "branches": {
                name: {"dim": dim, "dtype": self.dtype, "file": f"{name}.npy"} for name, dim in self.dims.items()
            },
            "shard_size": shard_size,
            "num_shards": self.num_shards,
            "items_sha256": _plan_id(self.paths, self.pids, self.camids),
        }
        self.arrays = None

    @property
    def num_items(self) -> int:
        return len(self.paths)

    def _partial(self, name: str) -> str:
        return os.path.join(self.folder, f"{name}.npy.partial")

    def prepare(self) -> FeatureStoreWriter:
        """Create the folder's partial arrays, metadata and plan, or check an unfinished one against them."""
        if os.path.isfile(os.path.join(self.folder, MANIFEST)):
            raise FeatureStoreError(
                f"{self.folder}: already holds finished features ({MANIFEST}); remove it or choose another --output"
            )
        plan_path = os.path.join(self.folder, PLAN)
        if os.path.isfile(plan_path):
            self._check_plan(plan_path)
            return self.open()
        if os.path.isdir(self.folder) and os.listdir(self.folder):
            raise FeatureStoreError(f"{self.folder}: exists and is not empty; choose a new folder for the features")
        os.makedirs(os.path.join(self.folder, SHARD_FOLDER), exist_ok=True)
        for name, dim in self.dims.items():
            # open_memmap makes a sparse file: the disk fills as the shards are written
            np.lib.format.open_memmap(
                self._partial(name), mode="w+", dtype=DTYPES[self.dtype], shape=(self.num_items, dim)
            )
        write_atomically(os.path.join(self.folder, "pids.npy"), lambda h: np.save(h, self.pids), "wb")
        write_atomically(os.path.join(self.folder, "camids.npy"), lambda h: np.save(h, self.camids), "wb")
        write_atomically(
            os.path.join(self.folder, "paths.txt"), lambda h: h.write("".join(p + "\n" for p in self.paths))
        )
        write_json_atomically(plan_path, self.plan)  # last: a folder with a plan has everything to resume
        return self.open()

    def _check_plan(self, plan_path: str) -> None:
        found = _read_json(plan_path, "the plan of an unfinished extraction")
        for key in ("num_items", "branches", "shard_size", "items_sha256"):
            if found.get(key) != self.plan[key]:
                raise FeatureStoreError(
                    f"{plan_path}: an unfinished extraction of other items or settings ({key} differs: "
                    f"{found.get(key)!r} there, {self.plan[key]!r} now); use a new folder, or the same images, "
                    f"branches, dtype and shard size to resume it"
                )

    def open(self) -> FeatureStoreWriter:
        """Map the partial arrays for writing (after ``prepare()`` by this or another process)."""
        self._check_plan(os.path.join(self.folder, PLAN))
        self.arrays = {}
        for name, dim in self.dims.items():
            self.arrays[name] = np.load(self._partial(name), mmap_mode="r+", allow_pickle=False)
            if self.arrays[name].shape != (self.num_items, dim) or self.arrays[name].dtype != DTYPES[self.dtype]:
                raise FeatureStoreError(
                    f"{self._partial(name)}: shape {self.arrays[name].shape} {self.arrays[name].dtype}, expected "
                    f"{(self.num_items, dim)} {self.dtype}"
                )
        return self

    def shard_rows(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.num_items)

    def pending(self, rank: int = 0, world_size: int = 1) -> list[int]:
        return [s for s in missing_shards(self.folder, self.num_shards) if s % world_size == rank]

    def write_shard(self, shard: int, feats: Mapping[str, np.ndarray]) -> None:
        if self.arrays is None:
            raise RuntimeError("call prepare() or open() before write_shard()")
        start, stop = self.shard_rows(shard)
        if set(feats) != set(self.dims):
            raise FeatureStoreError(f"shard {shard}: branches {sorted(feats)}, expected {sorted(self.dims)}")
        for name, value in feats.items():
            value = np.asarray(value)
            if value.shape != (stop - start, self.dims[name]):
                raise FeatureStoreError(
                    f"shard {shard}: {name} has shape {value.shape}, expected {(stop - start, self.dims[name])}"
                )
            if not np.isfinite(value).all():
                raise FeatureStoreError(f"shard {shard}: {name} holds NaN or infinite features (rows {start}:{stop})")
            target = self.arrays[name]
            target[start:stop] = value.astype(target.dtype, copy=False)
            target.flush()
        write_json_atomically(shard_marker(self.folder, shard), {"shard": shard, "start": start, "stop": stop})

    def finish(self) -> FeatureSet:
        """Check that every shard is written, rename the arrays and write the manifest (last)."""
        missing = missing_shards(self.folder, self.num_shards)
        if missing:
            raise FeatureStoreError(
                f"{self.folder}: {len(missing)} of {self.num_shards} shards are missing (first "
                f"{shard_marker(self.folder, missing[0])}); run the extraction again to write them"
            )
        if self.arrays is not None:
            for array in self.arrays.values():
                array.flush()
            self.arrays = None
        for name in self.dims:
            if os.path.isfile(self._partial(name)):  # else renamed by a finish() that stopped before the manifest
                os.replace(self._partial(name), os.path.join(self.folder, f"{name}.npy"))
        manifest = dict(self.plan)
        manifest.update(self.extra)
        write_json_atomically(os.path.join(self.folder, MANIFEST), manifest)
        return open_features(self.folder)
