"""Extraction into a feature folder (scstn_vcn.metrics.feature_store): shard by shard, resumable, and
split over the processes of a torchrun job.

``extract_to_folder(extract, paths, folder, dims, ...)`` runs ``extract(paths) -> {branch: (n, D)}`` on
one shard's images at a time and writes each shard as soon as it is done; shards written by an earlier,
interrupted run are skipped. With torchrun (``info.world_size`` > 1) rank 0 prepares the folder, every
rank writes the shards s with s % world_size == rank, and rank 0 finishes the folder after all ranks are
done. A shard's images are always cut into the same batches (from the shard's first image on), so the
features do not depend on the number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from scstn_vcn.metrics.feature_store import FeatureSet, FeatureStoreWriter

from .distributed import DistInfo, barrier


def extract_to_folder(
    extract: Callable[[Sequence[str]], dict],
    paths: Sequence[str],
    folder: str,
    dims: dict,
    *,
    dtype: str = "float32",
    pids=None,
    camids=None,
    shard_size: int = 8192,
    info: DistInfo | None = None,
    progress=None,
    extra: dict | None = None,
) -> FeatureSet | None:
    """Write the features of ``paths`` to ``folder``; returns the finished FeatureSet (on rank 0; None on
    the other ranks). ``progress`` (a tqdm bar) advances by the images of each shard written, and by the
    images of the shards found done."""
    info = info or DistInfo()
    writer = FeatureStoreWriter(
        folder, paths, dims, dtype, pids=pids, camids=camids, shard_size=shard_size, extra=extra
    )
    if info.is_main:
        writer.prepare()
    barrier(info)
    if not info.is_main:
        writer.open()
    mine = writer.pending(info.rank, info.world_size)
    if progress is not None:
        done = [s for s in range(info.rank, writer.num_shards, info.world_size) if s not in mine]
        progress.update(sum(writer.shard_rows(s)[1] - writer.shard_rows(s)[0] for s in done))
    for shard in mine:
        start, stop = writer.shard_rows(shard)
        feats = extract(writer.paths[start:stop])
        writer.write_shard(shard, {name: np.asarray(feats[name]) for name in writer.dims})
        if progress is not None:
            progress.update(stop - start)
    barrier(info)
    result = writer.finish() if info.is_main else None
    barrier(info)
    return result


def file_sha256(path: str) -> str:
    """sha256 of a file (a model file's identity: the features of two runs are comparable when it matches)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
