"""alpha-query expansion (scstn_vcn.metrics.query_expansion) against the dense reference
(tests/dense_rerank.py), in evaluate_features alone and before re-ranking, with bounded memory and errors
that name the argument."""

import numpy as np
import pytest
import torch
from dense_rerank import all_distances, alpha_query_expansion_dense, k_reciprocal_dense
from test_rerank import LargestTensor, clustered, exact_clustered, ids_from

from scstn_vcn.metrics import (
    QueryExpansionConfig,
    RerankConfig,
    alpha_query_expansion,
    evaluate_features,
    evaluate_rank_full,
)

NUM_QUERY, NUM_GALLERY = 19, 88


pytestmark = pytest.mark.usefixtures("one_thread")


# With exactly computed distances (and their ties) only in the first round: the expanded features are means
# whose distances round, so later rounds are compared on clustered features.
@pytest.mark.parametrize(
    "features,qe_k,alpha,qe_times",
    [
        ("clustered", 10, 3.0, 1),
        ("clustered", 1, 3.0, 1),
        ("clustered", 5, 0.0, 2),
        ("clustered", 7, 1.5, 3),
        ("clustered", NUM_QUERY + NUM_GALLERY, 3.0, 1),
        ("exact_with_duplicates", 10, 3.0, 1),
        ("exact_with_duplicates", 3, 0.0, 1),
        ("exact_with_duplicates", 7, 1.5, 1),
    ],
)
def test_alpha_qe_equals_dense_reference(features, qe_k, alpha, qe_times):
    rng = np.random.default_rng(qe_k + qe_times)
    n = NUM_QUERY + NUM_GALLERY
    x, _ = clustered(rng, n, 16) if features == "clustered" else exact_clustered(rng, n)
    ref_q, ref_g = alpha_query_expansion_dense(x[:NUM_QUERY], x[NUM_QUERY:], qe_k, alpha, qe_times)
    got_q, got_g = alpha_query_expansion(
        torch.from_numpy(x[:NUM_QUERY]),
        torch.from_numpy(x[NUM_QUERY:]),
        QueryExpansionConfig(qe_k, alpha, qe_times),
        chunk_size=13,
    )
    scale = np.abs(ref_g).max()
    np.testing.assert_allclose(got_q.numpy(), ref_q, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(got_g.numpy(), ref_g, rtol=0, atol=1e-5 * scale)


def test_qe_k_one_keeps_each_feature_and_alpha_zero_is_the_plain_mean():
    rng = np.random.default_rng(2)
    x, _ = clustered(rng, 40, 6)
    q, g = torch.from_numpy(x[:10]), torch.from_numpy(x[10:])
    got_q, got_g = alpha_query_expansion(q, g, QueryExpansionConfig(qe_k=1))
    torch.testing.assert_close(got_q, q, rtol=1e-5, atol=0)  # its own nearest, weight cos(x, x)^3 = 1
    torch.testing.assert_close(got_g, g, rtol=1e-5, atol=0)
    everything = torch.cat([q, g])
    mean_q, _ = alpha_query_expansion(q, g, QueryExpansionConfig(qe_k=40, alpha=0.0))
    torch.testing.assert_close(mean_q, everything.mean(0).expand(10, 6), rtol=1e-5, atol=1e-6)


def test_evaluate_features_qe_rows_and_qe_before_rerank():
    rng = np.random.default_rng(9)
    n = NUM_QUERY + NUM_GALLERY
    glob, labels = clustered(rng, n, 10)
    spatial, _ = clustered(rng, n, 14)
    feats = {"global": glob, "spatial": spatial}
    qf = {k: torch.from_numpy(v[:NUM_QUERY]) for k, v in feats.items()}
    gf = {k: torch.from_numpy(v[NUM_QUERY:]) for k, v in feats.items()}
    ids = ids_from(labels, rng, NUM_QUERY)
    qe, rk = QueryExpansionConfig(10, 3.0, 1), RerankConfig(20, 6, 0.3)
    got = evaluate_features(qf, gf, *ids, chunk_size=16, max_rank=20, query_expansion=qe, rerank=rk)
    assert list(got) == [
        "global",
        "spatial",
        "fusion",
        "global+qe",
        "spatial+qe",
        "fusion+qe",
        "global+qe+rk",
        "spatial+qe+rk",
        "fusion+qe+rk",
    ]
    expanded = {k: alpha_query_expansion_dense(v[:NUM_QUERY], v[NUM_QUERY:], 10, 3.0, 1) for k, v in feats.items()}
    for name, branches in (("global", ["global"]), ("spatial", ["spatial"]), ("fusion", ["global", "spatial"])):
        dist = all_distances({b: expanded[b][0] for b in branches}, {b: expanded[b][1] for b in branches})
        plain = evaluate_rank_full(dist[:NUM_QUERY, NUM_QUERY:], *ids, max_rank=20)
        reranked = evaluate_rank_full(k_reciprocal_dense(dist, NUM_QUERY, 20, 6, 0.3), *ids, max_rank=20)
        for suffix, ref in (("+qe", plain), ("+qe+rk", reranked)):
            np.testing.assert_array_equal(got[name + suffix]["cmc"], ref["cmc"])
            assert got[name + suffix]["mAP"] == pytest.approx(ref["mAP"], rel=1e-12, abs=0)
            assert got[name + suffix]["mINP"] == pytest.approx(ref["mINP"], rel=1e-12, abs=0)
    alone = evaluate_features(qf, gf, *ids, chunk_size=16, max_rank=20, query_expansion=qe)
    assert list(alone) == ["global", "spatial", "fusion", "global+qe", "spatial+qe", "fusion+qe"]
    assert alone["fusion+qe"]["mAP"] == got["fusion+qe"]["mAP"]


def test_query_expansion_memory_is_bounded():
    rng = np.random.default_rng(4)
    q, g, chunk = 301, 1900, 100
    x, _ = clustered(rng, q + g, 32, num_clusters=100)
    # distance blocks, a chunk's gathered neighbours, the new features (one copy of the features)
    limit = max(chunk * (q + g), chunk * 10 * 32, (q + g) * 32)
    assert limit < q * g
    with LargestTensor() as mode:
        alpha_query_expansion(torch.from_numpy(x[:q]), torch.from_numpy(x[q:]), chunk_size=chunk)
    assert mode.largest <= limit


def test_bad_input_names_the_argument():
    for bad in ({"qe_k": 0}, {"qe_k": 2.5}, {"qe_times": 0}, {"qe_times": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            QueryExpansionConfig(**bad)
    for bad in (-1.0, float("inf"), float("nan"), "3"):
        with pytest.raises(ValueError, match="alpha"):
            QueryExpansionConfig(alpha=bad)
    q, g = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="dimension"):
        alpha_query_expansion(q, torch.randn(5, 3))
    with pytest.raises(ValueError, match="chunk_size"):
        alpha_query_expansion(q, g, chunk_size=0)
    with pytest.raises(TypeError, match="QueryExpansionConfig"):
        alpha_query_expansion(q, g, 10)
    ids = ([1, 2, 1], [1, 2, 1, 2, 1], [0] * 3, [1] * 5)
    with pytest.raises(TypeError, match="query_expansion must be a QueryExpansionConfig"):
        evaluate_features({"global": q}, {"global": g}, *ids, query_expansion={"qe_k": 10})


def test_mixed_dtypes_are_promoted_to_one():
    """float64 queries with a float32 gallery expand as the float64 features (the dense reference)."""
    rng = np.random.default_rng(6)
    x, _ = clustered(rng, NUM_QUERY + NUM_GALLERY, 16)
    x = x.astype(np.float64)
    got_q, got_g = alpha_query_expansion(torch.from_numpy(x[:NUM_QUERY]), torch.from_numpy(x[NUM_QUERY:]).float())
    assert got_q.dtype == got_g.dtype == torch.float64
    ref_q, ref_g = alpha_query_expansion_dense(x[:NUM_QUERY], x[NUM_QUERY:].astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(got_q.numpy(), ref_q, rtol=1e-10, atol=0)
    np.testing.assert_allclose(got_g.numpy(), ref_g, rtol=1e-10, atol=0)
    half_q, _ = alpha_query_expansion(torch.from_numpy(x[:NUM_QUERY]).half(), torch.from_numpy(x[NUM_QUERY:]).float())
    assert half_q.dtype == torch.float32


def test_qe_k_beyond_the_items_and_overflowing_distances_are_errors():
    q, g = torch.randn(3, 8), torch.randn(5, 8)
    with pytest.raises(ValueError, match=r"qe_k = 9 must be at most the number of items = 8 \(3 queries"):
        alpha_query_expansion(q, g, QueryExpansionConfig(qe_k=9))
    ids = ([1, 2, 1], [1, 2, 1, 2, 1], [0] * 3, [1] * 5)
    with pytest.raises(ValueError, match="qe_k = 10"):
        evaluate_features({"global": q}, {"global": g}, *ids, query_expansion=QueryExpansionConfig(), fusion=None)
    with pytest.raises(ValueError, match=r"query\['feature'\] row 0 has a norm that overflows"):
        alpha_query_expansion(torch.full((3, 8), 1e20), g, QueryExpansionConfig(qe_k=4))
