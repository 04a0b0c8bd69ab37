"""pytest-benchmark cases of k-reciprocal re-ranking and query expansion at a tiny size, so that the
README's test command runs the benchmark code; the data-set-scale measurements (Market-1501 against the
dense reference, MSMT17) are benchmarks/rerank_scale.py's, in benchmarks/results/rerank-*.json.
Speed is recorded, never asserted; the results are checked against the dense reference."""

import numpy as np
from rerank_scale import all_distances, k_reciprocal_dense, make_data

from scstn_vcn.metrics import QueryExpansionConfig, RerankConfig, evaluate_features, k_reciprocal_rerank

QUERIES, GALLERY, IDS, CAMS, DIM = 60, 301, 20, 4, 64


def test_bench_k_reciprocal_rerank_tiny(benchmark):
    query, gallery, _ = make_data(QUERIES, GALLERY, IDS, CAMS, [DIM], spread=4.0, seed=0)
    config = RerankConfig()
    out = benchmark.pedantic(lambda: k_reciprocal_rerank(query, gallery, config, chunk_size=32), rounds=3, iterations=1)
    dense = {k: v.numpy() for k, v in query.items()}, {k: v.numpy() for k, v in gallery.items()}
    ref = k_reciprocal_dense(all_distances(*dense), QUERIES, config.k1, config.k2, config.lambda_value)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-5)
    benchmark.extra_info.update(queries=QUERIES, gallery=GALLERY, dim=DIM, **config.as_dict())


def test_bench_evaluate_features_qe_and_rerank_tiny(benchmark):
    query, gallery, ids = make_data(QUERIES, GALLERY, IDS, CAMS, [DIM, DIM], spread=4.0, seed=1)
    out = benchmark.pedantic(
        lambda: evaluate_features(
            query, gallery, *ids, chunk_size=32, rerank=RerankConfig(), query_expansion=QueryExpansionConfig()
        ),
        rounds=3,
        iterations=1,
    )
    assert list(out) == [
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
    benchmark.extra_info.update(
        queries=QUERIES, gallery=GALLERY, dims=[DIM, DIM], mAP={name: round(row["mAP"], 4) for name, row in out.items()}
    )
