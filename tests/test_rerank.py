"""k-reciprocal re-ranking (scstn_vcn.metrics.rerank, knn) against the dense reference (tests/dense_rerank.py):
equal final distances and identical CMC / mAP / mINP on clustered features, exact ties and duplicates,
bounded memory, and errors that name the argument."""

import gc
import weakref

import numpy as np
import pytest
import torch
from dense_rerank import all_distances, k_reciprocal_dense
from torch.utils._python_dispatch import TorchDispatchMode

from scstn_vcn.metrics import RerankConfig, evaluate_features, evaluate_rank_full, k_reciprocal_rerank, knn
from scstn_vcn.metrics.item_features import ItemFeatures
from scstn_vcn.metrics.knn import nearest_neighbours, smallest_k
from scstn_vcn.metrics.rerank import KReciprocalEncoding

NUM_QUERY, NUM_GALLERY = 23, 131  # odd sizes: blocks and chunks end short
SETTINGS = [(1, 1), (1, 2), (2, 1), (2, 3), (20, 1), (20, 6)]  # (k1, k2), k2 <= k1 + 1


pytestmark = pytest.mark.usefixtures("one_thread")


def clustered(rng, n, dim, num_clusters=9, spread=0.7):
    """Gaussian clusters (so that reciprocal sets and their expansion are not trivial), float32; labels."""
    centers = rng.standard_normal((num_clusters, dim))
    labels = rng.integers(0, num_clusters, n)
    return (centers[labels] + spread * rng.standard_normal((n, dim))).astype(np.float32), labels


def exact_clustered(rng, n, dim=24, nonzeros=16, num_clusters=7, copies=5):
    """Features whose cosine distances are computed exactly in float32 in any summation order: 16 entries
    of +-1 a row (norm 4), so every distance is a multiple of 1/16 and ties are exact. Cluster members flip
    a few signs of their centre; the first ``copies`` items are one feature repeated (duplicates)."""
    centers = np.zeros((num_clusters, dim), np.float32)
    for c in centers:
        c[rng.choice(dim, nonzeros, replace=False)] = rng.choice([-1.0, 1.0], nonzeros)
    labels = rng.integers(0, num_clusters, n)
    x = centers[labels].copy()
    for row in x:
        support = np.flatnonzero(row)
        flip = rng.choice(support, rng.integers(0, 4), replace=False)
        row[flip] *= -1
    x[1:copies] = x[0]
    labels[1:copies] = labels[0]
    return x, labels


def ids_from(labels, rng, num_query):
    cams = rng.integers(0, 4, labels.shape[0])
    return labels[:num_query], labels[num_query:], cams[:num_query], cams[num_query:]


def assert_same_ranking(got, ref, ids):
    """Identical CMC / mAP / mINP from the two (q, g) distance matrices."""
    a = evaluate_rank_full(got, *ids, max_rank=20)
    b = evaluate_rank_full(ref, *ids, max_rank=20)
    np.testing.assert_array_equal(a["cmc"], b["cmc"])
    assert (a["mAP"], a["mINP"], a["num_valid_queries"]) == (b["mAP"], b["mINP"], b["num_valid_queries"])


@pytest.mark.parametrize("features", ["clustered", "exact_with_duplicates"])
@pytest.mark.parametrize("k1,k2", SETTINGS)
@pytest.mark.parametrize("lambda_value", [0.0, 0.3, 1.0])
def test_rerank_equals_dense_reference(features, k1, k2, lambda_value):
    rng = np.random.default_rng(1000 * k1 + 10 * k2 + int(10 * lambda_value))
    n = NUM_QUERY + NUM_GALLERY
    x, labels = clustered(rng, n, 16) if features == "clustered" else exact_clustered(rng, n)
    query, gallery = x[:NUM_QUERY], x[NUM_QUERY:]
    ref = k_reciprocal_dense(all_distances({"f": query}, {"f": gallery}), NUM_QUERY, k1, k2, lambda_value)
    got = k_reciprocal_rerank(
        torch.from_numpy(query), torch.from_numpy(gallery), RerankConfig(k1, k2, lambda_value), chunk_size=17
    )
    assert got.shape == (NUM_QUERY, NUM_GALLERY) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-5)
    assert_same_ranking(got.numpy(), ref, ids_from(labels, rng, NUM_QUERY))


def test_rerank_changes_the_ranking_and_lambda_one_keeps_it():
    """The encoding is not trivial on these features (lambda < 1 reorders), and lambda = 1 leaves the
    normalised squared distance, which ranks as the distance does."""
    rng = np.random.default_rng(5)
    x, _ = clustered(rng, NUM_QUERY + NUM_GALLERY, 16)
    query, gallery = torch.from_numpy(x[:NUM_QUERY]), torch.from_numpy(x[NUM_QUERY:])
    plain = all_distances({"f": x[:NUM_QUERY]}, {"f": x[NUM_QUERY:]})[:NUM_QUERY, NUM_QUERY:]
    order = np.argsort(plain, axis=1, kind="stable")
    reranked = k_reciprocal_rerank(query, gallery, RerankConfig(20, 6, 0.3)).numpy()
    assert (np.argsort(reranked, axis=1, kind="stable") != order).any(axis=1).mean() > 0.5
    only_distance = k_reciprocal_rerank(query, gallery, RerankConfig(20, 6, 1.0)).numpy()
    np.testing.assert_array_equal(np.argsort(only_distance, axis=1, kind="stable")[:, :10], order[:, :10])


def test_fused_features_and_evaluate_features_rows():
    """The fusion re-ranks the sum of the branches' distances; evaluate_features' "+rk" rows equal the
    dense reference's metrics for each branch and the fusion, and its plain rows are unchanged."""
    rng = np.random.default_rng(7)
    n = NUM_QUERY + NUM_GALLERY
    glob, labels = clustered(rng, n, 12)
    spatial = glob[:, :8] @ rng.standard_normal((8, 20)).astype(np.float32) + rng.standard_normal((n, 20)).astype(
        np.float32
    )
    feats = {"global": glob, "spatial": spatial}
    qf = {k: torch.from_numpy(v[:NUM_QUERY]) for k, v in feats.items()}
    gf = {k: torch.from_numpy(v[NUM_QUERY:]) for k, v in feats.items()}
    ids = ids_from(labels, rng, NUM_QUERY)
    config = RerankConfig(20, 6, 0.3)
    got = evaluate_features(qf, gf, *ids, chunk_size=10, max_rank=20, rerank=config)
    plain = evaluate_features(qf, gf, *ids, chunk_size=10, max_rank=20)
    assert list(got) == ["global", "spatial", "fusion", "global+rk", "spatial+rk", "fusion+rk"]
    for name in plain:
        np.testing.assert_array_equal(got[name]["cmc"], plain[name]["cmc"])
        assert got[name]["mAP"] == plain[name]["mAP"]
    for name, branches in (("global", ["global"]), ("spatial", ["spatial"]), ("fusion", ["global", "spatial"])):
        dist = all_distances({b: feats[b][:NUM_QUERY] for b in branches}, {b: feats[b][NUM_QUERY:] for b in branches})
        ref = evaluate_rank_full(k_reciprocal_dense(dist, NUM_QUERY, 20, 6, 0.3), *ids, max_rank=20)
        np.testing.assert_array_equal(got[name + "+rk"]["cmc"], ref["cmc"])
        # The streaming evaluator sums the per-query AP / INP in another order than evaluate_rank_full.
        assert got[name + "+rk"]["mAP"] == pytest.approx(ref["mAP"], rel=1e-12, abs=0)
        assert got[name + "+rk"]["mINP"] == pytest.approx(ref["mINP"], rel=1e-12, abs=0)
    direct = k_reciprocal_rerank(qf, gf, config).numpy()
    fused_ref = k_reciprocal_dense(
        all_distances({b: v[:NUM_QUERY] for b, v in feats.items()}, {b: v[NUM_QUERY:] for b, v in feats.items()}),
        NUM_QUERY,
        20,
        6,
        0.3,
    )
    np.testing.assert_allclose(direct, fused_ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("k1,k2", [(8, 6), (8, 9)])
def test_k1_of_all_other_items_float64(k1, k2):
    """k1 = N - 1, the largest the data allows: every item's neighbour list is the whole row."""
    rng = np.random.default_rng(3)
    x, _ = clustered(rng, 9, 5, num_clusters=2)
    x = x.astype(np.float64)
    got = k_reciprocal_rerank(torch.from_numpy(x[:3]), torch.from_numpy(x[3:]), RerankConfig(k1, k2, 0.3), chunk_size=4)
    assert got.dtype == torch.float64
    ref = k_reciprocal_dense(all_distances({"f": x[:3]}, {"f": x[3:]}), 3, k1, k2, 0.3)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-12)


def test_k1_beyond_the_items_is_an_error_naming_k1_before_any_work():
    q, g = torch.randn(3, 5), torch.randn(6, 5)
    with pytest.raises(ValueError, match=r"rerank k1 = 9 must be at most the number of items - 1 = 8 \(3 queries"):
        k_reciprocal_rerank(q, g, RerankConfig(9, 6))
    items = ItemFeatures({"f": q}, {"f": g})
    neighbours = nearest_neighbours(items, {"v": ("f",)}, 9, 4)["v"]  # all 9: what k1 = 8 needs
    with pytest.raises(ValueError, match="rerank k1 = 20"):
        KReciprocalEncoding(items, ("f",), neighbours, RerankConfig(20, 6), 4)
    ids = ([1, 2, 1], [1, 2, 1, 2, 1, 2], [0] * 3, [1] * 6)
    bad = {"global": torch.full((3, 5), float("nan"))}  # the size check comes first, before any distance
    with pytest.raises(ValueError, match="rerank k1 = 20"):
        evaluate_features(bad, {"global": g}, *ids, rerank=RerankConfig(), fusion=None)


def _mixed(rng, num_query, num_gallery, dim):
    x, labels = clustered(rng, num_query + num_gallery, dim)
    return torch.from_numpy(x[:num_query]), torch.from_numpy(x[num_query:]), labels


@pytest.mark.parametrize(
    "query_dtype,gallery_dtype,expected",
    [
        (torch.float16, torch.float32, torch.float32),
        (torch.float32, torch.bfloat16, torch.float32),
        (torch.float16, torch.bfloat16, torch.float32),
        (torch.float64, torch.float32, torch.float64),
        (torch.float32, torch.float64, torch.float64),
    ],
)
def test_mixed_dtypes_are_promoted_to_one(query_dtype, gallery_dtype, expected):
    """Query and gallery features of different dtypes re-rank as their promotion (the dense reference on the
    features converted to torch.promote_types of the two, in float64)."""
    rng = np.random.default_rng(21)
    q, g, _ = _mixed(rng, NUM_QUERY, NUM_GALLERY, 16)
    q, g = q.to(query_dtype), g.to(gallery_dtype)
    got = k_reciprocal_rerank(q, g, RerankConfig(20, 6, 0.3), chunk_size=17)
    assert got.dtype == expected
    ref = k_reciprocal_dense(all_distances({"f": q.double().numpy()}, {"f": g.double().numpy()}), NUM_QUERY)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-5 if expected == torch.float32 else 1e-12)


def test_evaluate_features_with_mixed_dtypes():
    """float64 queries against a float32 gallery: the "+rk" rows are the dense reference's of the float64
    features, and the plain rows are those of the evaluation without re-ranking."""
    rng = np.random.default_rng(22)
    q, g, labels = _mixed(rng, NUM_QUERY, NUM_GALLERY, 12)
    ids = ids_from(labels, rng, NUM_QUERY)
    qf, gf = {"global": q.double()}, {"global": g}
    got = evaluate_features(qf, gf, *ids, chunk_size=10, max_rank=20, rerank=RerankConfig(), fusion=None)
    plain = evaluate_features(qf, gf, *ids, chunk_size=10, max_rank=20, fusion=None)
    np.testing.assert_array_equal(got["global"]["cmc"], plain["global"]["cmc"])
    assert got["global"]["mAP"] == plain["global"]["mAP"]
    dist = all_distances({"f": q.double().numpy()}, {"f": g.double().numpy()})
    ref = evaluate_rank_full(k_reciprocal_dense(dist, NUM_QUERY), *ids, max_rank=20)
    np.testing.assert_array_equal(got["global+rk"]["cmc"], ref["cmc"])
    assert got["global+rk"]["mAP"] == pytest.approx(ref["mAP"], rel=1e-12, abs=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_features_on_cuda_rerank_as_their_float32_upcast(dtype):
    """On the GPU the plain rows multiply half-precision features in half precision; the re-ranked rows
    must still be those of the float32 upcast, which the encoding is built from."""
    rng = np.random.default_rng(23)
    q, g, labels = _mixed(rng, NUM_QUERY, NUM_GALLERY, 64)
    ids = ids_from(labels, rng, NUM_QUERY)
    low_q, low_g = {"global": q.to(dtype).cuda()}, {"global": g.to(dtype).cuda()}
    up_q, up_g = {k: v.float() for k, v in low_q.items()}, {k: v.float() for k, v in low_g.items()}
    config = RerankConfig()
    got = evaluate_features(low_q, low_g, *ids, chunk_size=10, max_rank=20, rerank=config, fusion=None)
    ref = evaluate_features(up_q, up_g, *ids, chunk_size=10, max_rank=20, rerank=config, fusion=None)
    np.testing.assert_array_equal(got["global+rk"]["cmc"], ref["global+rk"]["cmc"])
    assert got["global+rk"]["mAP"] == pytest.approx(ref["global+rk"]["mAP"], rel=1e-6)
    direct = k_reciprocal_rerank(low_q, low_g, config).cpu().numpy()
    np.testing.assert_allclose(direct, k_reciprocal_rerank(up_q, up_g, config).cpu().numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("where", ["query", "gallery"])
def test_finite_features_whose_norms_overflow_are_an_error_naming_them(where):
    """Entries of 1e20 are finite, but their squared norm is not in float32 (their distances would be NaN,
    and NaN never ranks ahead of the padding index). One clear error, never an index out of range."""
    big = torch.full((3, 8), 1e20)
    q, g = (big, torch.randn(9, 8)) if where == "query" else (torch.randn(3, 8), big)
    with pytest.raises(ValueError, match=rf"{where}\['feature'\] row 0 has a norm that overflows torch.float32"):
        k_reciprocal_rerank(q, g, RerankConfig(2, 2))
    ids = ([1, 2, 1], [1, 2, 1] * (g.shape[0] // 3), [0] * 3, [1] * g.shape[0])
    with pytest.raises(ValueError, match=rf"{where}_feats\['global'\] row 0 has a norm that overflows"):
        evaluate_features({"global": q}, {"global": g}, *ids, rerank=RerankConfig(2, 2), fusion=None)
    plain = evaluate_features({"global": q}, {"global": g}, *ids, fusion=None)  # unchanged: no pass over all items
    assert plain["global"]["num_valid_queries"] == 3


def test_neighbours_from_another_search_are_checked():
    """An index outside the items (e.g. a search backend's -1 for 'not found') is refused by name."""
    q, g = torch.randn(4, 6), torch.randn(7, 6)
    items = ItemFeatures({"f": q}, {"f": g})
    neighbours = nearest_neighbours(items, {"v": ("f",)}, 3, 5)["v"]
    neighbours.index[5, 2] = -1
    with pytest.raises(ValueError, match=r"returned an index outside 0 \.\. 10 for item 5"):
        KReciprocalEncoding(items, ("f",), neighbours, RerankConfig(2, 2), 4)
    neighbours.index[5, 2] = 3
    neighbours.sq_max[7] = float("nan")
    with pytest.raises(
        ValueError, match=r"over query_feats\['f'\] / gallery_feats\['f'\] gave distances that are not finite \(item 7"
    ):
        KReciprocalEncoding(items, ("f",), neighbours, RerankConfig(2, 2), 4)


def test_encoding_keeps_no_features():
    """Once built, the encoding holds no reference to the features: dropping the ItemFeatures frees their
    device copies during the chunk loop."""
    q, g = torch.randn(5, 6, dtype=torch.float64), torch.randn(9, 6)
    items = ItemFeatures({"f": q}, {"f": g})  # the gallery is converted to float64: the copy lives in items
    neighbours = nearest_neighbours(items, {"v": ("f",)}, 4, 5)["v"]
    encoding = KReciprocalEncoding(items, ("f",), neighbours, RerankConfig(3, 2), 4)
    # (the query tensor is the caller's own, which this test keeps)
    copies = [weakref.ref(items.gallery["f"]), weakref.ref(items.query_inv["f"]), weakref.ref(items.gallery_inv["f"])]
    del items
    gc.collect()
    assert all(ref() is None for ref in copies)
    assert encoding.distances(0, 5, torch.rand(5, 9, dtype=torch.float64)).shape == (5, 9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jaccard_pairs_are_the_non_zero_overlaps_bit_for_bit(dtype):
    gen = torch.Generator().manual_seed(3)
    label = torch.randint(0, 12, (163,), generator=gen)
    x = (torch.randn(12, 10, generator=gen)[label] + 0.4 * torch.randn(163, 10, generator=gen)).to(dtype)
    items = ItemFeatures({"f": x[:29]}, {"f": x[29:]})
    neighbours = nearest_neighbours(items, {"v": ("f",)}, 8, 64)["v"]
    encoding = KReciprocalEncoding(items, ("f",), neighbours, RerankConfig(7, 3), 16)
    for start, stop in ((0, 29), (5, 17), (28, 29)):
        dense = encoding.jaccard_overlap(start, stop)
        row, col, m = encoding.jaccard_pairs(start, stop)
        expect_row, expect_col = dense.nonzero(as_tuple=True)
        torch.testing.assert_close(row, expect_row, rtol=0, atol=0)
        torch.testing.assert_close(col, expect_col, rtol=0, atol=0)
        assert torch.equal(m, dense[expect_row, expect_col])
        # the final distance: the Jaccard term of m = 0 is exactly 1 - lambda
        zero = torch.zeros(3, dtype=dense.dtype)
        assert torch.equal(encoding.jaccard_term(zero), torch.full_like(zero, 1 - 0.3))


@pytest.mark.parametrize("k2", [1, 3])
def test_column_index_from_chunks_equals_the_dense_transpose(k2):
    """The column index scattered a chunk of V_qe's rows at a time (V_qe never held whole, the memory bound at
    millions of items) is the transpose of the dense V_qe, whatever the chunk size; only the query rows of
    V_qe are kept."""
    gen = torch.Generator().manual_seed(5)
    label = torch.randint(0, 9, (140,), generator=gen)
    x = (torch.randn(9, 8, generator=gen)[label] + 0.5 * torch.randn(140, 8, generator=gen)).double()
    q = 17
    items = ItemFeatures({"f": x[:q]}, {"f": x[q:]})
    neighbours = nearest_neighbours(items, {"v": ("f",)}, 7, 64)["v"]
    config = RerankConfig(6, k2)
    small = KReciprocalEncoding(items, ("f",), neighbours, config, 3)  # chunks straddle the query/gallery edge
    large = KReciprocalEncoding(items, ("f",), neighbours, config, 1000)
    for name in ("column_ptr", "column_rows", "column_vals"):
        assert torch.equal(getattr(small, name), getattr(large, name)), name
    for name in ("ptr", "col", "val"):
        assert torch.equal(getattr(small.v_qe, name), getattr(large.v_qe, name)), name
    assert small.column_rows.dtype == torch.int32 and small.v_qe.num_rows == q
    # the dense reference: V from the encoding's first step, V_qe as the mean of k2 dense rows
    v = small._encode(items, neighbours)
    dense_v = torch.zeros(140, 140, dtype=torch.float64)
    rows = torch.repeat_interleave(torch.arange(140), v.row_counts())
    dense_v[rows, v.col.long()] = v.val
    dense = dense_v[neighbours.index[:, :k2]].mean(1)
    gallery = dense[q:]
    ptr = torch.zeros(141, dtype=torch.int64)
    ptr[1:] = torch.cumsum((gallery != 0).sum(0), 0)
    assert torch.equal(small.column_ptr, ptr)
    cols, grows = (gallery.t() != 0).nonzero(as_tuple=True)  # column-major: each column's rows ascending
    assert torch.equal(small.column_rows.long(), grows)
    torch.testing.assert_close(small.column_vals, gallery[grows, cols], rtol=1e-15, atol=0)
    qrows, qcols = (dense[:q] != 0).nonzero(as_tuple=True)
    assert torch.equal(small.v_qe.col.long(), qcols)
    torch.testing.assert_close(small.v_qe.val, dense[qrows, qcols], rtol=1e-15, atol=0)
    dist = torch.rand(q, 123, dtype=torch.float64)
    assert torch.equal(small.distances(0, q, dist), large.distances(0, q, dist))


@pytest.mark.parametrize("k1", range(1, 42))
def test_expansion_k_rounds_half_to_even_like_numpy(k1):
    assert RerankConfig(k1, 1).expansion_k == int(np.around(k1 / 2.0))


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("block", [2, 5, 13, 200])
def test_nearest_neighbours_match_a_full_stable_sort(block, onednn, monkeypatch):
    """Exact top-k in blocks, on distances with many exact ties (and duplicates), equals a stable argsort,
    with the CPU's oneDNN product and with torch's GEMM (where oneDNN is missing, and on CUDA)."""
    monkeypatch.setitem(knn._ONEDNN, "usable", None if onednn else False)
    rng = np.random.default_rng(block)
    x, _ = exact_clustered(rng, 61, copies=9)
    items = ItemFeatures({"f": torch.from_numpy(x[:20])}, {"f": torch.from_numpy(x[20:])})
    dist = all_distances({"f": x[:20]}, {"f": x[20:]})
    for k in (1, 2, 7, 61):
        got = nearest_neighbours(items, {"v": ("f",)}, k, block)["v"]
        assert knn._ONEDNN["usable"] is (onednn or False)  # the path under test was taken
        expected = np.argsort(dist, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(got.index.numpy(), expected)
        np.testing.assert_array_equal(got.distance.numpy(), np.take_along_axis(dist, expected, 1).astype(np.float32))
        np.testing.assert_array_equal(got.sq_max.numpy(), (dist * dist).max(1).astype(np.float32))


def test_smallest_k_resolves_ties_at_the_boundary_by_index():
    values = torch.tensor([[3.0, 1.0, 2.0, 1.0, 2.0, 2.0, 0.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])
    top, index = smallest_k(values, 4)
    assert index.tolist() == [[6, 1, 3, 2], [0, 1, 2, 3]]
    assert top.tolist() == [[0.0, 1.0, 1.0, 2.0], [5.0] * 4]
    for k in range(1, 8):
        expected = torch.sort(values, dim=1, stable=True).indices[:, :k]
        assert torch.equal(smallest_k(values, k)[1], expected)


class LargestTensor(TorchDispatchMode):
    """Records the number of elements of the largest tensor any torch operation creates."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_memory_is_bounded_no_square_matrix():
    """No tensor of N x N, nor of q x g, is created: every tensor stays below chunk * N (a distance block,
    a query chunk's distances) plus k2 N (k1 + 1) (the neighbour lists, and the sparse encodings: V_qe has
    at most k2 |R*| entries a row)."""
    rng = np.random.default_rng(11)
    num_query, num_gallery, chunk, k1, k2 = 401, 2600, 100, 20, 6
    n = num_query + num_gallery
    x, labels = clustered(rng, n, 32, num_clusters=150, spread=0.5)
    qf, gf = {"global": torch.from_numpy(x[:num_query])}, {"global": torch.from_numpy(x[num_query:])}
    ids = ids_from(labels, rng, num_query)
    limit = chunk * n + k2 * n * (k1 + 1)
    assert limit < num_query * num_gallery < n * n
    with LargestTensor() as mode:
        out = evaluate_features(qf, gf, *ids, chunk_size=chunk, rerank=RerankConfig(k1, k2, 0.3), fusion=None)
    assert out["global+rk"]["num_valid_queries"] > 0
    assert chunk * num_gallery <= mode.largest <= limit, (mode.largest, limit)
    # The check can fail: the dense way creates an N x N tensor.
    with LargestTensor() as mode:
        torch.cdist(torch.from_numpy(x), torch.from_numpy(x))
    assert mode.largest > limit


def test_bad_settings_name_the_argument():
    with pytest.raises(ValueError, match="k1"):
        RerankConfig(k1=0)
    with pytest.raises(ValueError, match="k1"):
        RerankConfig(k1=2.5)
    with pytest.raises(ValueError, match="k1"):
        RerankConfig(k1=True)
    with pytest.raises(ValueError, match="k2"):
        RerankConfig(k1=20, k2=0)
    with pytest.raises(ValueError, match="k2"):
        RerankConfig(k1=20, k2=22)
    for bad in (-0.1, 1.5, float("nan"), "0.3"):
        with pytest.raises(ValueError, match="lambda_value"):
            RerankConfig(lambda_value=bad)
    assert RerankConfig(np.int64(4), np.int64(5), np.float32(0.5)).as_dict() == {"k1": 4, "k2": 5, "lambda_value": 0.5}


def test_bad_features_name_the_argument():
    q, g = torch.randn(4, 8), torch.randn(6, 8)
    with pytest.raises(ValueError, match="dimension"):
        k_reciprocal_rerank(q, torch.randn(6, 7))
    with pytest.raises(ValueError, match="same, non-empty feature names"):
        k_reciprocal_rerank({"global": q}, {"spatial": g})
    with pytest.raises(ValueError, match="same number of rows"):
        k_reciprocal_rerank({"a": q, "b": q}, {"a": g, "b": g[:5]})
    with pytest.raises(TypeError, match="both be tensors or both be dicts"):
        k_reciprocal_rerank({"a": q}, g)
    with pytest.raises(ValueError, match=r"gallery\['feature'\] contains NaN"):
        k_reciprocal_rerank(q, torch.full((6, 8), float("nan")))
    with pytest.raises(ValueError, match="chunk_size"):
        k_reciprocal_rerank(q, g, chunk_size=0)
    with pytest.raises(TypeError, match="config must be a RerankConfig"):
        k_reciprocal_rerank(q, g, {"k1": 20})
    ids = ([1, 2, 1, 2], [1, 2, 1, 2, 1, 2], [0] * 4, [1] * 6)
    with pytest.raises(TypeError, match="rerank must be a RerankConfig"):
        evaluate_features({"global": q}, {"global": g}, *ids, rerank=True)
