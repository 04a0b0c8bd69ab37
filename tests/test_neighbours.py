"""Neighbour backends (scstn_vcn.metrics.neighbours) against exact neighbours: a dense numpy reference
and the blocked exact pass (knn.nearest_neighbours)."""

import sys

import numpy as np
import pytest
import torch

from scstn_vcn.metrics.item_features import ItemFeatures
from scstn_vcn.metrics.knn import nearest_neighbours
from scstn_vcn.metrics.neighbours import (
    FaissMissingError,
    NeighbourSearch,
    default_nlist,
    exact_rows,
    find_neighbours,
    measure_recall,
)

faiss = pytest.importorskip("faiss", reason="faiss is not installed (pip install '.[faiss]')")

VIEWS = {"global": ("global",), "fusion": ("global", "spatial")}


def _clustered(num_query, num_gallery, dims=(24, 12), clusters=30, noise=0.35, seed=0, dtype=torch.float64):
    """Items around cluster centres, as a trained network's features of identities lie: cluster structure
    in a low-dimensional subspace plus noise."""
    gen = torch.Generator().manual_seed(seed)
    n = num_query + num_gallery
    label = torch.randint(0, clusters, (n,), generator=gen)
    feats = {}
    for name, dim in zip(("global", "spatial"), dims):
        centres = torch.randn(clusters, dim, generator=gen, dtype=torch.float64)
        x = centres[label] + noise * torch.randn(n, dim, generator=gen, dtype=torch.float64)
        feats[name] = x.to(dtype)
    query = {b: f[:num_query] for b, f in feats.items()}
    gallery = {b: f[num_query:] for b, f in feats.items()}
    return ItemFeatures(query, gallery)


def _dense(items, branches):
    """Dense float64 reference: the view's (N, N) distance."""
    out = 0
    for b in branches:
        x = torch.cat([items.query[b], items.gallery[b]]).double()
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        out = out + (1 - x @ x.T)
    return out.numpy()


def test_flat_backend_equals_exact_neighbours_and_row_maxima():
    items = _clustered(37, 260)
    k = 9
    exact = nearest_neighbours(items, VIEWS, k, block_size=64)
    found, report = find_neighbours(items, VIEWS, k, NeighbourSearch("faiss-flat", recall_sample=50))
    for view, branches in VIEWS.items():
        dense = _dense(items, branches)
        order = np.argsort(dense, axis=1, kind="stable")[:, :k]
        # float64 features: the flat index's float32 search only picks candidates, rescored in float64
        np.testing.assert_array_equal(found[view].index.numpy(), order)
        np.testing.assert_array_equal(found[view].index, exact[view].index)
        torch.testing.assert_close(found[view].distance, exact[view].distance, rtol=0, atol=1e-12)
        torch.testing.assert_close(found[view].sq_max, torch.from_numpy((dense**2).max(1)), rtol=1e-12, atol=1e-12)
        assert report["views"][view][f"recall_at_{k}"] == 1.0
        assert report["views"][view]["row_max_ratio_min"] == pytest.approx(1.0, abs=1e-9)
    assert report["backend"] == "faiss-flat"


def test_ivf_probing_every_list_is_exhaustive():
    items = _clustered(20, 400, seed=1)
    k = 7
    exact = nearest_neighbours(items, VIEWS, k, block_size=100)
    search = NeighbourSearch("faiss-ivf", nlist=8, nprobe=8, codes="Flat", far_k=400, far_nprobe=8)
    found, _ = find_neighbours(items, VIEWS, k, search)
    for view in VIEWS:
        np.testing.assert_array_equal(found[view].index, exact[view].index)
        torch.testing.assert_close(found[view].sq_max, exact[view].sq_max, rtol=1e-12, atol=0)


@pytest.mark.parametrize("codes", ["Flat", "SQ8", "SQ4"])
def test_ivf_recall_on_clustered_features(codes):
    items = _clustered(50, 1950, seed=2, dtype=torch.float32)
    k = 21
    search = NeighbourSearch("faiss-ivf", nlist=32, nprobe=4, codes=codes, recall_sample=300)
    found, report = find_neighbours(items, {"fusion": ("global", "spatial")}, k, search)
    measured = report["views"]["fusion"]
    assert measured["rows"] == 300 and measured[f"recall_at_{k}"] >= 0.95
    # the independent count on every row: recall against the dense reference
    order = np.argsort(_dense(items, ("global", "spatial")), axis=1, kind="stable")[:, :k]
    hits = [len(set(a) & set(b)) for a, b in zip(found["fusion"].index.numpy(), order)]
    assert np.mean(hits) / k >= 0.95
    # every list holds the item itself, k distinct items, ordered by distance
    idx = found["fusion"].index
    assert (idx == torch.arange(2000)[:, None]).any(1).all()
    assert all(len(set(row)) == k for row in idx.tolist())
    assert (found["fusion"].distance.diff(dim=1) >= 0).all()


def test_ivf_row_maximum_is_a_lower_bound_and_close():
    items = _clustered(10, 990, seed=3)
    k = 5
    exact = nearest_neighbours(items, {"global": ("global",)}, k, block_size=200)["global"]
    search = NeighbourSearch("faiss-ivf", nlist=16, nprobe=2, codes="Flat")
    found, report = find_neighbours(items, {"global": ("global",)}, k, search)
    ratio = (found["global"].sq_max / exact.sq_max).sqrt()
    assert (ratio <= 1 + 1e-12).all()  # a real distance of the row: never above the maximum
    assert ratio.mean() > 0.98 and report["views"]["global"]["row_max_ratio_mean"] > 0.98


def test_rows_with_too_few_candidates_are_searched_exactly():
    items = _clustered(5, 300, clusters=60, noise=0.05, seed=4)
    k = 12  # clusters hold about 5 items: one probed list cannot give 12
    exact = nearest_neighbours(items, {"global": ("global",)}, k, block_size=64)["global"]
    search = NeighbourSearch("faiss-ivf", nlist=60, nprobe=1, codes="Flat", train_size=300)
    found, _ = find_neighbours(items, {"global": ("global",)}, k, search)
    assert (found["global"].index < items.num_items).all()
    assert found["global"].index.shape == (305, k)
    recall = measure_recall(items, ("global",), found["global"], sample=305)
    assert recall[f"recall_at_{k}"] > 0.9
    # exact_rows itself equals the exact pass
    dist, index, sq_max = exact_rows(items, ("global",), torch.tensor([0, 7, 304]), k)
    np.testing.assert_array_equal(index, exact.index[[0, 7, 304]])
    torch.testing.assert_close(sq_max, exact.sq_max[[0, 7, 304]])


def test_exact_backend_is_the_blocked_pass():
    items = _clustered(11, 90, seed=5)
    found, report = find_neighbours(items, VIEWS, 6)
    exact = nearest_neighbours(items, VIEWS, 6, block_size=50)
    for view in VIEWS:
        np.testing.assert_array_equal(found[view].index, exact[view].index)
    assert report["backend"] == "exact" and report["seconds"] >= 0


def test_bad_settings_are_one_clear_error(monkeypatch):
    with pytest.raises(
        ValueError, match="backend must be one of auto, exact, faiss-flat, faiss-ivf, faiss, got 'hnsw'"
    ):
        NeighbourSearch("hnsw")
    with pytest.raises(ValueError, match="nprobe must be a positive integer, got 0"):
        NeighbourSearch("faiss-ivf", nprobe=0)
    with pytest.raises(ValueError, match="codes must be"):
        NeighbourSearch("faiss-ivf", codes="LSH")
    items = _clustered(3, 100)
    with pytest.raises(ValueError, match="m = 5 must divide the view's dimension 24"):
        find_neighbours(items, {"global": ("global",)}, 3, NeighbourSearch("faiss-ivf", codes="PQ5", nlist=2))
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(FaissMissingError, match=r'pip install "scstn-vcn\[faiss\]"'):
        find_neighbours(items, {"global": ("global",)}, 3, NeighbourSearch("faiss-flat"))


def test_factory_backend_finds_the_neighbours_of_low_dimensional_features():
    # the identities' structure in a 24-d subspace of 96 dimensions, plus a little isotropic noise: a
    # PCA-reduced HNSW graph finds the neighbours, re-scored exactly in the full dimension
    gen = torch.Generator().manual_seed(11)
    basis = torch.linalg.qr(torch.randn(96, 24, generator=gen, dtype=torch.float64))[0].T
    label = torch.randint(0, 150, (1500,), generator=gen)
    latent = torch.randn(150, 24, generator=gen, dtype=torch.float64)[label]
    x = (latent + 0.5 * torch.randn(1500, 24, generator=gen, dtype=torch.float64)) @ basis
    x = (x + 0.02 * torch.randn(1500, 96, generator=gen, dtype=torch.float64)).float()
    items = ItemFeatures({"global": x[:100]}, {"global": x[100:]})
    k = 21
    search = NeighbourSearch("faiss", factory="PCA32,HNSW16", params="efSearch=64", recall_sample=200)
    found, report = find_neighbours(items, {"global": ("global",)}, k, search)
    order = np.argsort(_dense(items, ("global",)), axis=1, kind="stable")[:, :k]
    hits = [len(set(a) & set(b)) for a, b in zip(found["global"].index.numpy(), order)]
    assert np.mean(hits) / k >= 0.97
    assert report["views"]["global"][f"recall_at_{k}"] >= 0.97
    assert report["factory"] == "PCA32,HNSW16" and report["params"] == "efSearch=64"
    assert report["far_params"] == "efSearch=32"  # the HNSW default for the row maximum
    # exact distances of the candidates, ordered; a real distance of the row bounds its maximum from below
    exact = nearest_neighbours(items, {"global": ("global",)}, k, block_size=256)["global"]
    same = found["global"].index == exact.index
    torch.testing.assert_close(found["global"].distance[same], exact.distance[same], rtol=0, atol=1e-6)
    ratio = (found["global"].sq_max / exact.sq_max).sqrt()
    assert (ratio <= 1 + 1e-6).all() and ratio.mean() > 0.95


def test_factory_backend_with_an_exhaustive_index_is_exact():
    items = _clustered(15, 300, seed=12)
    exact = nearest_neighbours(items, VIEWS, 8, block_size=64)
    found, report = find_neighbours(items, VIEWS, 8, NeighbourSearch("faiss", factory="Flat", far_k=315))
    for view in VIEWS:
        np.testing.assert_array_equal(found[view].index, exact[view].index)
        torch.testing.assert_close(found[view].sq_max, exact[view].sq_max, rtol=1e-12, atol=0)
    assert report["params"] == "" and report["backend"] == "faiss"
    # an IVF inside the factory string takes nprobe; probing every list is exhaustive
    search = NeighbourSearch("faiss", factory="IVF4,Flat", nprobe=4, far_k=315)
    found, report = find_neighbours(items, VIEWS, 8, search)
    assert report["params"] == "nprobe=4" and report["far_params"] == "nprobe=2"
    for view in VIEWS:
        np.testing.assert_array_equal(found[view].index, exact[view].index)


def test_factory_backend_bad_settings_are_one_clear_error():
    with pytest.raises(ValueError, match="backend 'faiss' needs factory"):
        NeighbourSearch("faiss")
    with pytest.raises(ValueError, match="factory 'Bogus12' is not an index factory string faiss can build"):
        NeighbourSearch("faiss", factory="Bogus12")
    with pytest.raises(ValueError, match="factory is for backend 'faiss', not 'faiss-ivf'"):
        NeighbourSearch("faiss-ivf", factory="HNSW32")
    with pytest.raises(ValueError, match="params must be faiss parameters such as 'efSearch=128'"):
        NeighbourSearch("faiss", factory="HNSW32", params="efSearch")
    items = _clustered(3, 100)
    search = NeighbourSearch("faiss", factory="HNSW8", params="nprobe=4")
    with pytest.raises(ValueError, match="params 'nprobe=4' do not apply to the index"):
        find_neighbours(items, {"global": ("global",)}, 3, search)


def test_default_nlist():
    assert default_nlist(519_281) == 2048 and default_nlist(2_362_447) == 8192
    assert default_nlist(100) == 2 and default_nlist(10) == 1


def test_reranked_evaluation_with_faiss_neighbours_equals_exact_and_reads_memory_maps(tmp_path):
    from scstn_vcn.metrics import RerankConfig, evaluate_features

    items = _clustered(40, 500, seed=6, dtype=torch.float32)
    rng = np.random.default_rng(0)
    q_pids, g_pids = rng.integers(0, 30, 40), rng.integers(0, 30, 500)
    q_cams, g_cams = rng.integers(0, 3, 40), rng.integers(0, 3, 500)
    # the gallery memory-mapped from .npy files, as open_features gives it
    gallery = {}
    for name, value in items.gallery.items():
        np.save(tmp_path / f"{name}.npy", value.numpy())
        gallery[name] = np.load(tmp_path / f"{name}.npy", mmap_mode="c")
    args = (items.query, gallery, q_pids, g_pids, q_cams, g_cams)
    kwargs = {"rerank": RerankConfig(k1=8, k2=3), "chunk_size": 16, "fprs": None}
    exact = evaluate_features(*args, **kwargs)
    flat = evaluate_features(*args, neighbours=NeighbourSearch("faiss-flat", recall_sample=20), **kwargs)
    for row in ("global", "spatial", "fusion", "global+rk", "fusion+rk"):
        for metric in ("rank1", "mAP", "mINP"):
            assert flat[row][metric] == pytest.approx(exact[row][metric], abs=1e-6), (row, metric)
    assert flat["fusion+rk"]["neighbours"]["backend"] == "faiss-flat"
    assert flat["fusion+rk"]["neighbours"]["recall_at_9"] == 1.0
    # the search's time and the recall measurement's are reported apart
    assert {"seconds", "recall_seconds"} <= set(flat["fusion+rk"]["neighbours"])
    assert exact["fusion+rk"]["neighbours"]["backend"] == "exact"
    with pytest.raises(TypeError, match="neighbours must be a NeighbourSearch or None"):
        evaluate_features(*args, neighbours="faiss-ivf", **kwargs)


def test_auto_is_exact_up_to_its_size_and_ivf_above(monkeypatch):
    import scstn_vcn.metrics.neighbours as nb

    items = _clustered(10, 300, seed=7)
    found, report = find_neighbours(items, {"global": ("global",)}, 5)
    assert report["backend"] == "exact" and report["requested"] == "auto"
    monkeypatch.setattr(nb, "AUTO_EXACT_UP_TO", 100)
    found, report = find_neighbours(items, {"global": ("global",)}, 5, NeighbourSearch(nlist=4, recall_sample=50))
    assert report["backend"] == "faiss-ivf" and report["requested"] == "auto"
    assert report["views"]["global"]["recall_at_5"] > 0.9
    monkeypatch.setitem(sys.modules, "faiss", None)
    _, report = find_neighbours(items, {"global": ("global",)}, 5)
    assert report["backend"] == "exact"  # without faiss, auto falls back to the exact pass


def test_default_train_size():
    from scstn_vcn.metrics.faiss_index import default_train_size

    assert default_train_size(519_281, 2048, 2048) == 64 * 2048  # 1 GiB of 2,048-d vectors
    assert default_train_size(2_362_447, 8192, 14336) == 39 * 8192  # faiss's minimum wins over the cap
    assert default_train_size(1000, 8, 16) == 512 and default_train_size(100, 8, 16) == 100
