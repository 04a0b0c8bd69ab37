"""TPR@FPR (scstn_vcn.metrics.verification) against scikit-learn's roc_curve on the same distances:
ties, the junk identity, the same-identity-same-camera exclusion, chunking, the buffer's compaction,
and the rows evaluate_features adds (plain and "+rk")."""

import math

import numpy as np
import pytest
import torch

from scstn_vcn.metrics import RerankConfig, cosine_distance, evaluate_features, k_reciprocal_rerank
from scstn_vcn.metrics.verification import (
    StreamingVerification,
    fpr_label,
    max_false_positives,
    pair_counts,
    tpr_key,
)

roc_curve = pytest.importorskip("sklearn.metrics").roc_curve


def kept_pairs(dist, q_pids, q_camids, g_pids, g_camids):
    """(same identity, distance) of the pairs the protocol keeps, from the full matrix."""
    same = q_pids[:, None] == g_pids[None, :]
    keep = (g_pids[None, :] != -1) & ~(same & (q_camids[:, None] == g_camids[None, :]))
    return same[keep], np.asarray(dist)[keep]


def reference_points(dist, ids, fprs):
    """[(fpr, tpr, threshold)] per target: scikit-learn's ROC point with the largest FPR <= target, the
    last of its points with that FPR; its thresholds are on the score -distance."""
    same, d = kept_pairs(dist, *ids)
    fpr, tpr, thresholds = roc_curve(same, -d, drop_intermediate=False)
    out = []
    for target in fprs:
        i = np.searchsorted(fpr, target, side="right") - 1
        out.append((fpr[i], tpr[i], -thresholds[i]))
    return out


def streamed(dist, ids, fprs, chunk=3, order=None, **kwargs):
    q_pids, q_camids, g_pids, g_camids = ids
    acc = StreamingVerification(q_pids, q_camids, g_pids, g_camids, fprs, **kwargs)
    order = np.arange(len(q_pids)) if order is None else order
    for start in range(0, len(order), chunk):
        rows = order[start : start + chunk]
        acc.update(torch.as_tensor(dist[rows]), q_pids[rows], q_camids[rows])
    return acc.compute()


def assert_matches_sklearn(result, dist, ids, fprs):
    for point, (fpr, tpr, threshold) in zip(result["points"], reference_points(dist, ids, fprs)):
        assert point["fpr"] == fpr
        assert point["tpr"] == tpr
        assert point["threshold"] == threshold


def random_ids(rng, nq, ng, identities=6, cameras=3):
    q_pids = rng.integers(0, identities, nq)
    g_pids = rng.integers(-1, identities, ng)  # -1: junk gallery images
    return q_pids, rng.integers(0, cameras, nq), g_pids, rng.integers(0, cameras, ng)


FPRS = (1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 0.9)


@pytest.mark.parametrize("levels", [2, 3, 7, None])  # None: continuous distances, no ties
def test_points_equal_sklearn_with_ties_junk_and_camera_exclusion(levels):
    rng = np.random.default_rng(levels or 0)
    for _ in range(25):
        nq, ng = int(rng.integers(2, 25)), int(rng.integers(3, 50))
        ids = random_ids(rng, nq, ng)
        if levels is None:
            dist = rng.random((nq, ng)).astype(np.float32)
        else:  # many pairs at each of a few distances
            dist = (rng.integers(0, levels, (nq, ng)) / levels).astype(np.float32)
        result = streamed(dist, ids, FPRS, chunk=int(rng.integers(1, 6)), order=rng.permutation(nq))
        if result["num_positive_pairs"] == 0 or result["num_negative_pairs"] == 0:
            continue
        assert_matches_sklearn(result, dist, ids, FPRS)


def test_exclusions_change_the_answer():
    """A pair of the query's identity and camera, or with a junk gallery image, would be a positive or
    a negative at distance 0 if it were counted: the reference without the filter disagrees."""
    q_pids, q_camids = np.array([0, 1]), np.array([0, 0])
    g_pids, g_camids = np.array([0, 0, 1, 1, -1, 2]), np.array([0, 1, 0, 1, 1, 1])
    dist = np.array([[0.0, 0.3, 0.5, 0.6, 0.0, 0.4], [0.7, 0.8, 0.0, 0.2, 0.1, 0.9]], dtype=np.float32)
    ids = (q_pids, q_camids, g_pids, g_camids)
    result = streamed(dist, ids, (0.2, 0.5))
    assert (result["num_positive_pairs"], result["num_negative_pairs"]) == (2, 6)
    assert_matches_sklearn(result, dist, ids, (0.2, 0.5))
    # kept: positives 0.3 (q0) and 0.2 (q1); negatives 0.5, 0.6, 0.4 (q0), 0.7, 0.8, 0.9 (q1)
    assert [(p["fpr"], p["tpr"], p["threshold"]) for p in result["points"]] == [
        (1 / 6, 1.0, pytest.approx(0.4)),
        (0.5, 1.0, pytest.approx(0.6)),
    ]


@pytest.mark.parametrize("min_buffer", [0, 1 << 20])  # 0: the buffer is compacted among ties
def test_all_ties_accept_all_or_nothing(min_buffer):
    """Every pair at one distance: the only ROC points are (0, 0) and (1, 1)."""
    q_pids, g_pids = np.arange(30) % 7, np.arange(50) % 7
    ids = (q_pids, np.zeros(30, int), g_pids, np.ones(50, int))
    dist = np.full((30, 50), 0.25, dtype=np.float32)
    result = streamed(dist, ids, (0.5, 0.99), chunk=2, min_buffer=min_buffer)
    for point in result["points"]:
        assert (point["fpr"], point["tpr"], point["threshold"]) == (0.0, 0.0, -math.inf)
    assert_matches_sklearn(result, dist, ids, (0.5, 0.99))


def test_compaction_of_the_negative_buffer_is_exact():
    """With min_buffer=0 the buffer is compacted many times as the chunks stream in; the points must not
    change (float32 and float64 distances, with ties)."""
    rng = np.random.default_rng(5)
    nq, ng = 60, 400
    ids = random_ids(rng, nq, ng, identities=20, cameras=4)
    for dtype in (np.float32, np.float64):
        dist = np.round(rng.random((nq, ng)), 3).astype(dtype)
        fprs = (1e-3, 4e-3, 0.02)
        result = streamed(dist, ids, fprs, chunk=4, order=rng.permutation(nq), min_buffer=0)
        assert_matches_sklearn(result, dist, ids, fprs)
        whole = streamed(dist, ids, fprs, chunk=nq)
        assert result["points"] == whole["points"]


def test_max_false_positives_matches_float_division():
    for negatives in (1, 7, 999, 1000, 1001, 12345, 10**9 + 7):
        for fpr in (1e-4, 1e-3, 1e-2, 0.1, 0.3, 1 / 3):
            m = max_false_positives(fpr, negatives)
            assert m / negatives <= fpr
            assert m + 1 > negatives or (m + 1) / negatives > fpr


def test_pair_counts_equal_the_dense_count():
    rng = np.random.default_rng(1)
    for _ in range(10):
        ids = random_ids(rng, 17, 41, identities=5, cameras=2)
        same, _ = kept_pairs(np.zeros((17, 41)), *ids)
        assert pair_counts(*ids) == (int(same.sum()), int((~same).sum()))


def test_roc_curve_points_are_true_roc_points():
    """Every point of the thinned curve is on the exact ROC: its TPR is the TPR at its FPR's threshold."""
    rng = np.random.default_rng(2)
    ids = random_ids(rng, 40, 300, identities=15)
    dist = rng.random((40, 300)).astype(np.float32) + (ids[0][:, None] != ids[2][None, :])
    result = streamed(dist, ids, (1e-3, 1e-2), chunk=7)
    same, d = kept_pairs(dist, *ids)
    roc = result["roc"]
    assert roc["fpr"][0] == 0 and roc["tpr"][0] == 0 and roc["fpr"][-1] == 1 and roc["tpr"][-1] == 1
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    for fpr, tpr, threshold in zip(roc["fpr"][1:], roc["tpr"][1:], roc["threshold"][1:]):
        accepted = d <= threshold
        assert accepted[~same].sum() / (~same).sum() == fpr
        assert accepted[same].sum() / same.sum() == tpr
    for point in result["points"]:
        at = np.flatnonzero((roc["fpr"] == point["fpr"]) & (roc["tpr"] == point["tpr"]))
        assert at.size == 1 and roc["threshold"][at[0]] == point["threshold"]


def test_errors_and_degenerate_sets():
    ids = (np.array([0, 1]), np.array([0, 0]), np.array([0, 1, 2]), np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        StreamingVerification(*ids, fprs=(0.0,))
    with pytest.raises(ValueError, match="at least one"):
        StreamingVerification(*ids, fprs=())
    acc = StreamingVerification(*ids, fprs=(0.1,))
    with pytest.raises(ValueError, match="shape \\(B, 3\\)"):
        acc.update(torch.zeros(1, 2), [0], [0])
    acc.update(torch.zeros(1, 3), [0], [0])
    with pytest.raises(ValueError, match="every query exactly once"):
        acc.compute()
    # One identity only: no negative pair, so no rate is defined.
    one = StreamingVerification([0], [0], [0, 0], [1, 2], fprs=(0.1,))
    one.update(torch.zeros(1, 2), [0], [0])
    result = one.compute()
    assert result["num_negative_pairs"] == 0 and math.isnan(result["points"][0]["tpr"])


def test_labels():
    assert fpr_label(1e-4) == "1e-4" and fpr_label(0.0025) == "2.5e-3" and fpr_label(0.5) == "5e-1"
    assert tpr_key(1e-3) == "TPR@FPR=1e-3"


def test_evaluate_features_rows_equal_sklearn_plain_and_reranked():
    """evaluate_features' TPR and threshold keys, for every row, equal scikit-learn on the same float64
    distances (the features' cosine distances, their fusion, and the re-ranked distances)."""
    gen = torch.Generator().manual_seed(3)
    nq, ng, identities = 23, 71, 9
    q_pids, g_pids = np.arange(nq) % identities, np.arange(ng) % identities
    g_pids[::13] = -1
    q_camids, g_camids = np.arange(nq) % 2, np.arange(ng) % 3
    centres = torch.randn(identities, 6, dtype=torch.float64, generator=gen)
    feats = {}
    for side, pids in (("q", q_pids), ("g", g_pids)):
        base = centres[np.maximum(pids, 0)]
        feats[side] = {
            "global": base + 0.8 * torch.randn(len(pids), 6, dtype=torch.float64, generator=gen),
            "spatial": torch.randn(len(pids), 10, dtype=torch.float64, generator=gen) + base.repeat(1, 2)[:, :10],
        }
    config = RerankConfig(k1=6, k2=3, lambda_value=0.3)
    fprs = (0.01, 0.05, 0.2)
    results = evaluate_features(
        feats["q"], feats["g"], q_pids, g_pids, q_camids, g_camids, rerank=config, fprs=fprs, chunk_size=5
    )
    ids = (q_pids, q_camids, g_pids, g_camids)
    dists = {n: cosine_distance(feats["q"][n], feats["g"][n]) for n in ("global", "spatial")}
    dists["fusion"] = dists["global"] + dists["spatial"]
    for name in ("global", "spatial"):
        dists[name + "+rk"] = k_reciprocal_rerank(feats["q"][name], feats["g"][name], config)
    dists["fusion+rk"] = k_reciprocal_rerank(feats["q"], feats["g"], config)
    assert set(results) == set(dists)
    for name, dist in dists.items():
        row = results[name]
        for target, (_, tpr, threshold) in zip(fprs, reference_points(dist.numpy(), ids, fprs)):
            label = fpr_label(target)
            assert row[f"TPR@FPR={label}"] == tpr, name
            assert row[f"threshold@FPR={label}"] == pytest.approx(threshold, rel=1e-12, abs=1e-12), name
    assert (
        "TPR@FPR=1e-2"
        not in evaluate_features(feats["q"], feats["g"], q_pids, g_pids, q_camids, g_camids, fprs=None)["fusion"]
    )
