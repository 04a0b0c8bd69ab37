"""`scstn-vcn index` and `scstn-vcn search --index` over feature folders, against a dense numpy reference."""

import json
import os

import numpy as np
import pytest

from scstn_vcn.cli import main
from scstn_vcn.metrics.feature_store import FeatureStoreWriter
from scstn_vcn.metrics.gallery_index import GalleryIndex, index_factory_for

pytest.importorskip("faiss", reason="faiss is not installed (pip install '.[faiss]')")


def _clustered(n, seed, centres):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, centres["global"].shape[0], n)
    return {
        name: (c[label] + 0.4 * rng.standard_normal((n, c.shape[1]))).astype(np.float32) for name, c in centres.items()
    }


def _folder(path, feats, first=0, pids=None, camids=None):
    n = next(iter(feats.values())).shape[0]
    paths = [f"images/{first + i:06d}_c{i % 4 + 1}.jpg" for i in range(n)]
    pids = np.arange(n) + first if pids is None else pids
    writer = FeatureStoreWriter(path, paths, {b: f.shape[1] for b, f in feats.items()}, pids=pids, camids=camids)
    writer.prepare()
    for shard in range(writer.num_shards):
        start, stop = writer.shard_rows(shard)
        writer.write_shard(shard, {b: f[start:stop] for b, f in feats.items()})
    writer.finish()
    return paths


def _dense_topk(query, gallery, k):
    dist = 0
    for name in ("global", "spatial"):
        q = query[name].astype(np.float64)
        g = gallery[name].astype(np.float64)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        dist = dist + (1 - q @ g.T)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, 1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("index")
    rng = np.random.default_rng(0)
    centres = {"global": rng.standard_normal((40, 16)), "spatial": rng.standard_normal((40, 8))}
    gallery, extra, query = _clustered(1500, 1, centres), _clustered(300, 2, centres), _clustered(60, 3, centres)
    _folder(base / "gallery", gallery)
    extra_paths = _folder(base / "extra", extra, first=1500)
    _folder(base / "query", query)
    return base, gallery, extra, query, extra_paths


def _search(base, index, *more):
    out = base / "results.json"
    argv = ["search", "--index", str(index), "--query-features", str(base / "query")]
    assert main(argv + ["--topk", "10", "--results", str(out), *more]) == 0
    found = json.loads(out.read_text())["queries"]
    return np.array([q["items"] for q in found]), np.array([q["distances"] for q in found])


def test_flat_index_equals_dense_search_and_takes_new_items(folders, tmp_path, capsys):
    base, gallery, extra, query, extra_paths = folders
    index = tmp_path / "gallery.index"
    assert main(["index", "--features", str(base / "gallery"), "--output", str(index)]) == 0
    meta = json.loads((tmp_path / "gallery.index.json").read_text())
    assert meta["factory"] == "Flat" and meta["view"] == ["global", "spatial"] and meta["num_items"] == 1500
    ids, dist = _search(base, index)
    order, reference = _dense_topk(query, gallery, 10)
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_allclose(dist, reference, rtol=0, atol=1e-9)
    # add a second folder: the search now spans both, and items map back to the right files
    assert main(["index", "--features", str(base / "extra"), "--output", str(index), "--add"]) == 0
    both = {b: np.concatenate([gallery[b], extra[b]]) for b in gallery}
    ids, dist = _search(base, index)
    order, reference = _dense_topk(query, both, 10)
    np.testing.assert_array_equal(ids, order)
    loaded = GalleryIndex.load(str(index))
    assert loaded.num_items == 1800 and loaded.metadata(1500 + 7) == (extra_paths[7], 1507, -1)
    assert sorted(os.listdir(tmp_path)) == ["gallery.index", "gallery.index.json"]  # no temporaries
    assert "(pid" in capsys.readouterr().out


def test_ivf_index_recall_against_dense_search(folders, tmp_path):
    base, gallery, _, query, _ = folders
    index = tmp_path / "ivf.index"
    argv = ["index", "--features", str(base / "gallery"), "--output", str(index), "--type", "ivf", "--nlist", "16"]
    assert main(argv + ["--nprobe", "4"]) == 0
    assert json.loads((tmp_path / "ivf.index.json").read_text())["factory"] == "IVF16,SQ8"
    ids, dist = _search(base, index)
    order, reference = _dense_topk(query, gallery, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, order)])
    assert recall >= 0.95
    # re-scored exactly: the distances of the items found are the dense ones
    dense = {tuple(pair): d for row in range(60) for pair, d in zip(zip([row] * 10, order[row]), reference[row])}
    matched = [(d, dense[(row, i)]) for row in range(60) for i, d in zip(ids[row], dist[row]) if (row, i) in dense]
    np.testing.assert_allclose(*zip(*matched), rtol=0, atol=1e-9)
    # nprobe = nlist searches every list: exact; the same from the memory-mapped index file
    ids, _ = _search(base, index, "--nprobe", "16")
    np.testing.assert_array_equal(ids, order)
    ids, _ = _search(base, index, "--nprobe", "16", "--mmap-index")
    np.testing.assert_array_equal(ids, order)


def test_bad_input_is_one_clear_error(folders, tmp_path, capsys):
    base, gallery, *_ = folders
    index = tmp_path / "g.index"
    assert main(["index", "--features", str(base / "gallery"), "--output", str(index), "--branches", "global"]) == 0

    def fails(argv, message):
        assert main(argv) == 2
        assert message in capsys.readouterr().err

    fails(["index", "--features", str(base / "gallery"), "--output", str(index)], "exists; remove it, or use --add")
    fails(["index", "--features", str(base / "nope"), "--output", str(tmp_path / "x")], "no such feature folder")
    fails(["index", "--features", str(base / "gallery"), "--output", str(tmp_path / "x"), "--nprobe", "0"], "--nprobe")
    fails(["index", "--features", str(base / "gallery"), "--output", str(tmp_path / "x"), "--codes", "LSH"], "codes")
    query = ["search", "--index", str(index), "--query-features", str(base / "query")]
    fails(query + ["--nprobe", "0"], "--nprobe must be a positive integer")
    fails(query + ["--gallery", "x"], "--gallery and --index exclude each other")
    # an image query needs the gallery's model; features alone need none
    fails(query[:3] + ["--query", "q.jpg"], "--query IMAGE needs --checkpoint")
    fails(["search", "--query", "q.jpg", "--gallery", "g/"], "--checkpoint is required")
    # query features of another model: other dimensions, or without the index's branches
    rng = np.random.default_rng(5)
    _folder(tmp_path / "q5", {"global": rng.standard_normal((4, 5)).astype(np.float32)})
    other = query[:4] + [str(tmp_path / "q5")]
    fails(other, "the query features must give 'global' of dimension 16")
    _folder(tmp_path / "qs", {"spatial": rng.standard_normal((4, 8)).astype(np.float32)})
    fails(query[:4] + [str(tmp_path / "qs")], "branches ['global'] asked for, the folder holds ['spatial']")
    assert not (tmp_path / "x").exists()
    # an index whose JSON describes other features
    meta = json.loads((tmp_path / "g.index.json").read_text())
    (tmp_path / "g.index.json").write_text(json.dumps(dict(meta, num_items=99)))
    fails(query, "g.index: holds 1500 vectors of dimension 16, but")
    (tmp_path / "g.index.json").write_text(json.dumps(dict(meta, folders=[dict(meta["folders"][0], items_sha256="0")])))
    fails(query, "not the features the index")
    os.remove(tmp_path / "g.index.json")
    fails(query, "g.index.json: no such file")
    (tmp_path / "bad.index").write_bytes(b"not an index")
    (tmp_path / "bad.index.json").write_text(json.dumps(meta))
    fails(query[:2] + [str(tmp_path / "bad.index")] + query[3:], "bad.index: faiss cannot read it")


def test_default_factories():
    assert index_factory_for(50_000) == "Flat"
    assert index_factory_for(50_001) == index_factory_for(2_362_447, "hnsw") == "PCA64,HNSW32"
    assert index_factory_for(2_362_447, width=255) == "HNSW32"
    assert index_factory_for(2_362_447, "ivf") == "IVF8192,SQ8"
    assert index_factory_for(10, "ivf", nlist=2, codes="PQ4") == "IVF2,PQ4"
    with pytest.raises(ValueError, match="nlist and codes are for an ivf index, not hnsw"):
        index_factory_for(60_000, nlist=64)
    with pytest.raises(ValueError, match="index type must be one of auto, flat, hnsw, ivf"):
        index_factory_for(10, "graph")


def test_hnsw_type_is_a_graph_searched_with_efsearch_128(folders, tmp_path):
    base, gallery, _, query, _ = folders
    index = tmp_path / "graph.index"
    assert main(["index", "--features", str(base / "gallery"), "--output", str(index), "--type", "hnsw"]) == 0
    meta = json.loads((tmp_path / "graph.index.json").read_text())
    # a 24-dimensional view: no PCA in front of the graph
    assert (meta["factory"], meta["metric"], meta["params"]) == ("HNSW32", "l2", "efSearch=128")
    ids, dist = _search(base, index)
    order, reference = _dense_topk(query, gallery, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, order)]) >= 0.98
    assert GalleryIndex.load(str(index)).index.hnsw.efSearch == 128  # the default (faiss: 16), set again on load


def test_eval_reads_feature_folders(tmp_path, capsys):
    from scstn_vcn.metrics import RerankConfig, evaluate_features
    from scstn_vcn.metrics.feature_store import open_features

    rng = np.random.default_rng(7)
    centres = {"global": rng.standard_normal((20, 12)), "spatial": rng.standard_normal((20, 6))}
    for split, n in (("q", 30), ("g", 400)):
        pids = rng.integers(0, 20, n)
        feats = {
            b: (c[pids] + 0.6 * rng.standard_normal((n, len(c[0])))).astype(np.float32) for b, c in centres.items()
        }
        _folder(tmp_path / split, feats, pids=pids, camids=rng.integers(0, 4, n))
    out = tmp_path / "results.json"
    base = ["eval", "--query-features", str(tmp_path / "q"), "--gallery-features", str(tmp_path / "g")]
    argv = base + [
        "--output",
        str(out),
        "--rerank-neighbours",
        "faiss-flat",
        "--rerank-k1",
        "6",
        "--set",
        "eval.fprs=[]",
    ]
    assert main(argv) == 0
    saved = json.loads(out.read_text())
    q, g = open_features(tmp_path / "q"), open_features(tmp_path / "g")
    reference = evaluate_features(
        q.feats, g.feats, q.pids, g.pids, q.camids, g.camids, rerank=RerankConfig(k1=6), fprs=None
    )
    for row in ("global", "fusion", "fusion+rk"):
        assert saved["results"][row]["mAP"] == pytest.approx(round(100 * reference[row]["mAP"], 2), abs=0.011)
    assert saved["neighbours"]["fusion+rk"]["backend"] == "faiss-flat"
    assert saved["neighbours"]["fusion+rk"]["recall_at_7"] == 1.0
    assert "chunks of" in capsys.readouterr().out
    assert main(base) == 2 and "--output JSON is required" in capsys.readouterr().err
    assert main(base[:3] + ["--output", str(out)]) == 2 and "give both" in capsys.readouterr().err
    assert main(base + ["--output", str(out), "--checkpoint", "x"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert main(["eval"]) == 2 and "give --checkpoint PATH" in capsys.readouterr().err
    # any faiss index by its factory string, recorded with its parameters and measured recall
    hnsw = base + ["--output", str(out), "--rerank-neighbours", "faiss", "--faiss-index", "HNSW8"]
    assert main(hnsw + ["--faiss-params", "efSearch=200", "--rerank-k1", "6", "--set", "eval.fprs=[]"]) == 0
    used = json.loads(out.read_text())["neighbours"]["fusion+rk"]
    assert used["factory"] == "HNSW8" and used["params"] == "efSearch=200" and used["recall_at_7"] > 0.9
    assert main(base + ["--output", str(out), "--rerank-neighbours", "faiss"]) == 2
    assert "eval.rerank_faiss_index" in capsys.readouterr().err
    assert main(hnsw + ["--faiss-params", "efSearch"]) == 2
    assert "eval.rerank_faiss_params" in capsys.readouterr().err
    assert main(base + ["--output", str(out), "--rerank-neighbours", "faiss", "--faiss-index", "Bogus7"]) == 2
    assert "factory 'Bogus7' is not an index factory string" in capsys.readouterr().err
    assert main(base + ["--output", str(out), "--rerank-neighbours", "faiss", "--faiss-index", "PCA8,HNSW8"]) == 2
    assert "cannot be trained on the view spatial (6 dimensions" in capsys.readouterr().err


def test_factory_index_graph_over_a_pca(folders, tmp_path, capsys):
    """Any faiss factory string (L2 metric), with its search parameters kept as the index's defaults."""
    base, gallery, _, query, _ = folders
    index = tmp_path / "hnsw.index"
    argv = ["index", "--features", str(base / "gallery"), "--output", str(index)]
    assert main(argv + ["--factory", "PCA16,HNSW16", "--params", "efSearch=64"]) == 0
    meta = json.loads((tmp_path / "hnsw.index.json").read_text())
    assert (meta["factory"], meta["metric"], meta["params"]) == ("PCA16,HNSW16", "l2", "efSearch=64")
    loaded = GalleryIndex.load(str(index))
    assert loaded.index.is_trained and loaded.index.ntotal == 1500
    ids, dist = _search(base, index)
    order, reference = _dense_topk(query, gallery, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, order)]) >= 0.95
    found = ids == order
    np.testing.assert_allclose(dist[found], reference[found], rtol=0, atol=1e-9)  # re-scored exactly
    # a wide search with every candidate re-scored finds the exact top 10
    ids, _ = _search(base, index, "--params", "efSearch=1500", "--rescore", "150")
    np.testing.assert_array_equal(ids, order)
    capsys.readouterr()

    def fails(more, message, command=argv):
        assert main(command + more) == 2
        assert message in capsys.readouterr().err

    other = ["index", "--features", str(base / "gallery"), "--output", str(tmp_path / "x")]
    fails(["--factory", "PCA16,HNSW16", "--type", "ivf"], "--factory names the whole index", other)
    fails(["--factory", "Bogus7"], "factory 'Bogus7' is not an index factory string", other)
    fails(["--factory", "PCA64,HNSW16"], "cannot be trained on the view global+spatial", other)
    fails(["--factory", "HNSW16", "--nprobe", "8"], "nprobe is for an index with inverted lists", other)
    fails(["--type", "hnsw", "--nlist", "8"], "--nlist and --codes are for --type ivf", other)
    fails(["--factory", "HNSW16", "--params", "efSearch"], "--params must be faiss parameters", other)
    fails(["--factory", "HNSW16", "--params", "nprobe=4"], "do not apply to the index", other)
    assert not (tmp_path / "x").exists()
    search = ["search", "--index", str(index), "--query-features", str(base / "query")]
    fails(["--nprobe", "4"], "nprobe is for an index with inverted lists", search)
    fails(["--params", "ef"], "--params must be faiss parameters", search)
