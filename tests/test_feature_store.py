"""Feature folders (scstn_vcn.metrics.feature_store): written shard by shard, resumed without recomputing
the shards that are done, read back memory-mapped; broken folders are one clear error naming the file."""

import json
import os

import numpy as np
import pytest

from scstn_vcn.engine.feature_shards import extract_to_folder
from scstn_vcn.metrics.feature_store import FeatureStoreError, FeatureStoreWriter, open_features


def _items(n, seed=0):
    rng = np.random.default_rng(seed)
    paths = [f"img/{i:05d}_c{i % 3 + 1}.jpg" for i in range(n)]
    feats = {"global": rng.standard_normal((n, 7)).astype(np.float32), "spatial": rng.standard_normal((n, 5))}
    return paths, feats, rng.integers(0, 9, n), np.arange(n) % 3


def _extract_from(feats, paths, calls):
    index = {p: i for i, p in enumerate(paths)}

    def extract(chunk):
        calls.append(list(chunk))
        rows = [index[p] for p in chunk]
        return {name: value[rows] for name, value in feats.items()}

    return extract


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_written_shards_read_back_memory_mapped(tmp_path, dtype):
    paths, feats, pids, camids = _items(23)
    calls = []
    dims = {"global": 7, "spatial": 5}
    out = extract_to_folder(
        _extract_from(feats, paths, calls),
        paths,
        tmp_path / "f",
        dims,
        dtype=dtype,
        pids=pids,
        camids=camids,
        shard_size=6,
    )
    assert [len(c) for c in calls] == [6, 6, 6, 5]
    again = open_features(tmp_path / "f")
    for fs in (out, again):
        assert fs.num_items == 23 and fs.branches == ["global", "spatial"] and fs.paths == paths
        np.testing.assert_array_equal(fs.pids, pids)
        np.testing.assert_array_equal(fs.camids, camids)
        for name in dims:
            assert isinstance(fs.feats[name], np.memmap) and fs.feats[name].dtype == np.dtype(dtype)
            np.testing.assert_array_equal(fs.feats[name], feats[name].astype(dtype))
    assert not any(name.endswith(".partial") for name in os.listdir(tmp_path / "f"))


def test_a_resumed_run_skips_the_shards_that_are_done(tmp_path):
    paths, feats, pids, camids = _items(20)
    dims = {"global": 7, "spatial": 5}
    calls = []
    extract = _extract_from(feats, paths, calls)

    def failing(chunk):
        if len(calls) == 2:
            raise RuntimeError("killed")
        return extract(chunk)

    with pytest.raises(RuntimeError, match="killed"):
        extract_to_folder(failing, paths, tmp_path / "f", dims, shard_size=8)
    # interrupted: not a feature folder yet, and the error names the missing shard
    with pytest.raises(FeatureStoreError, match=r"did not finish \(1 of 3 shards missing: .*000002.json"):
        open_features(tmp_path / "f")
    calls.clear()
    fs = extract_to_folder(extract, paths, tmp_path / "f", dims, shard_size=8)
    assert calls == [paths[16:]]  # only the missing shard
    np.testing.assert_array_equal(fs.feats["global"], feats["global"])
    # other images, or another shard size, are refused rather than mixed in
    with pytest.raises(FeatureStoreError, match="already holds finished features"):
        extract_to_folder(extract, paths, tmp_path / "f", dims, shard_size=8)
    calls[:] = [None, None]  # the next call fails: an unfinished folder g
    with pytest.raises(RuntimeError, match="killed"):
        extract_to_folder(failing, paths, tmp_path / "g", dims, shard_size=8)
    with pytest.raises(FeatureStoreError, match="items_sha256 differs"):
        extract_to_folder(extract, paths[::-1], tmp_path / "g", dims, shard_size=8)
    with pytest.raises(FeatureStoreError, match="shard_size differs"):
        extract_to_folder(extract, paths, tmp_path / "g", dims, shard_size=4)


def test_broken_folders_name_the_file(tmp_path):
    paths, feats, pids, camids = _items(9)
    dims = {"global": 7, "spatial": 5}
    folder = tmp_path / "f"
    extract_to_folder(_extract_from(feats, paths, []), paths, folder, dims, pids=pids, camids=camids, shard_size=4)
    np.save(folder / "spatial.npy", feats["spatial"][:8].astype(np.float32))
    with pytest.raises(FeatureStoreError, match=r"spatial.npy: shape \(8, 5\), expected \(9, 5\)"):
        open_features(folder)
    np.save(folder / "spatial.npy", feats["spatial"].astype(np.float64))
    with pytest.raises(FeatureStoreError, match=r"spatial.npy: dtype float64, expected float32"):
        open_features(folder)
    assert open_features(folder, ["global"]).branches == ["global"]
    np.save(folder / "pids.npy", np.zeros(9, np.int32))
    with pytest.raises(FeatureStoreError, match=r"pids.npy: dtype int32, expected int64"):
        open_features(folder, ["global"])
    os.remove(folder / "global.npy")
    with pytest.raises(FeatureStoreError, match=r"global.npy: no such file"):
        open_features(folder, ["global"])
    (folder / "features.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(FeatureStoreError, match="features.json: format 'other'"):
        open_features(folder)
    with pytest.raises(FeatureStoreError, match="not a feature folder"):
        open_features(tmp_path)
    with pytest.raises(FeatureStoreError, match="no such feature folder"):
        open_features(tmp_path / "nope")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(FeatureStoreError, match="exists and is not empty"):
        FeatureStoreWriter(tmp_path / "busy", paths, dims).prepare()


def test_writer_checks_its_inputs(tmp_path):
    paths, feats, _, _ = _items(5)
    dims = {"global": 7, "spatial": 5}
    with pytest.raises(FeatureStoreError, match="dtype must be one of"):
        FeatureStoreWriter(tmp_path / "a", paths, dims, dtype="int8")
    with pytest.raises(FeatureStoreError, match="pids has 4 entries, expected 5"):
        FeatureStoreWriter(tmp_path / "a", paths, dims, pids=[1, 2, 3, 4])
    with pytest.raises(FeatureStoreError, match="line break"):
        FeatureStoreWriter(tmp_path / "a", ["a\nb"], dims)
    with pytest.raises(FeatureStoreError, match="the image list is empty"):
        FeatureStoreWriter(tmp_path / "a", [], dims)
    writer = FeatureStoreWriter(tmp_path / "a", paths, dims, shard_size=5).prepare()
    with pytest.raises(FeatureStoreError, match=r"global has shape \(4, 7\), expected \(5, 7\)"):
        writer.write_shard(0, {"global": feats["global"][:4], "spatial": feats["spatial"]})
    bad = feats["global"].copy()
    bad[2, 3] = np.nan
    with pytest.raises(FeatureStoreError, match="NaN"):
        writer.write_shard(0, {"global": bad, "spatial": feats["spatial"]})
    with pytest.raises(FeatureStoreError, match="1 of 1 shards are missing"):
        writer.finish()
    assert not (tmp_path / "a" / "features.json").exists()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_evaluation_reads_feature_folders(tmp_path, dtype):
    import torch

    from scstn_vcn.metrics import RerankConfig, evaluate_features

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((12, 7))
    labels = {"query": rng.integers(0, 12, 15), "gallery": rng.integers(0, 12, 70)}
    sets = {}
    for split, pids in labels.items():
        feats = {"global": centres[pids] + 0.5 * rng.standard_normal((len(pids), 7))}
        paths = [f"{split}/{i}.jpg" for i in range(len(pids))]
        cams = rng.integers(0, 3, len(pids))
        sets[split] = extract_to_folder(
            _extract_from(feats, paths, []), paths, tmp_path / split, {"global": 7}, dtype=dtype, pids=pids, camids=cams
        )
    q, g = sets["query"], sets["gallery"]
    kwargs = {"fusion": None, "rerank": RerankConfig(k1=5, k2=2), "chunk_size": 4, "fprs": None}
    from_disk = evaluate_features(q.feats, g.feats, q.pids, g.pids, q.camids, g.camids, **kwargs)
    in_memory = evaluate_features(
        {"global": torch.from_numpy(np.array(q.feats["global"], dtype=np.float32))},
        {"global": torch.from_numpy(np.array(g.feats["global"], dtype=np.float32))},
        q.pids,
        g.pids,
        q.camids,
        g.camids,
        **kwargs,
    )
    for row in ("global", "global+rk"):
        for metric in ("rank1", "mAP", "mINP"):
            assert from_disk[row][metric] == pytest.approx(in_memory[row][metric], abs=1e-9)
