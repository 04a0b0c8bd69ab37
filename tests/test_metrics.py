"""Tests of scstn_vcn.metrics: hand-computed CMC / mAP / mINP, streaming == full evaluation."""

import numpy as np
import pytest
import torch

from scstn_vcn.metrics import (
    StreamingRankEvaluator,
    cosine_distance,
    evaluate_features,
    evaluate_rank,
    evaluate_rank_full,
)

# Hand-computed case. Gallery indices 0..5; index 3 is junk (-1).
G_PIDS = np.array([1, 1, 2, -1, 2, 3])
G_CAMS = np.array([0, 1, 0, 1, 1, 0])
Q_PIDS = np.array([1, 2, 4, 2])
Q_CAMS = np.array([0, 0, 0, 2])
DISTMAT = np.array(
    [
        # q0 (pid 1, cam 0): sorted 3(junk) 1(pos) 2 4 5 0(same pid+cam: discarded) -> positive at rank 1.
        [0.5, 0.1, 0.2, 0.05, 0.3, 0.4],
        # q1 (pid 2, cam 0): sorted 2(discarded) 0 1 3(junk) 5 4(pos) -> positive at rank 4.
        [0.1, 0.2, 0.05, 0.3, 0.6, 0.4],
        # q2 (pid 4): not in the gallery -> skipped.
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        # q3 (pid 2, cam 2): sorted 3(junk) 1 | 0 2(pos) 4(pos) tied at 0.3, stable by index | 5
        # -> positives at ranks 3 and 4 (an unstable sort could give 2 and 3).
        [0.3, 0.1, 0.3, 0.0, 0.3, 0.5],
    ]
)
# AP: q0 = 1, q1 = 1/4, q3 = (1/3 + 2/4) / 2 = 5/12 -> mAP = (1 + 1/4 + 5/12) / 3 = 5/9.
# INP: q0 = 1/1, q1 = 1/4, q3 = 2/4 -> mINP = 7/12. First-positive ranks 1, 4, 3.
EXPECTED_MAP = 5 / 9
EXPECTED_MINP = 7 / 12
# Gallery (6) shorter than max_rank (10): the CMC is padded with its last value, 1.
EXPECTED_CMC10 = np.array([1 / 3, 1 / 3, 2 / 3, 1, 1, 1, 1, 1, 1, 1])


def test_evaluate_rank_hand_computed():
    cmc, mAP = evaluate_rank(DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=10)
    assert cmc.shape == (10,)
    np.testing.assert_allclose(cmc, EXPECTED_CMC10)
    assert mAP == pytest.approx(EXPECTED_MAP)


def test_evaluate_rank_full_hand_computed_minp():
    result = evaluate_rank_full(DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=2)
    np.testing.assert_allclose(result["cmc"], EXPECTED_CMC10[:2])
    assert result["mAP"] == pytest.approx(EXPECTED_MAP)
    assert result["mINP"] == pytest.approx(EXPECTED_MINP)
    assert result["num_valid_queries"] == 3


def test_minp_single_query():
    # One query, positives at ranks 2 and 5 -> INP = 2/5, AP = (1/2 + 2/5) / 2.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    g_pids = np.array([9, 7, 9, 9, 7])
    result = evaluate_rank_full(distmat, [7], g_pids, [0], [1, 1, 1, 1, 1], max_rank=5)
    assert result["mINP"] == pytest.approx(2 / 5)
    assert result["mAP"] == pytest.approx((1 / 2 + 2 / 5) / 2)
    np.testing.assert_allclose(result["cmc"], [0, 1, 1, 1, 1])


def test_evaluate_rank_accepts_tensors():
    cmc, mAP = evaluate_rank(
        torch.from_numpy(DISTMAT).float(),
        torch.from_numpy(Q_PIDS),
        torch.from_numpy(G_PIDS),
        torch.from_numpy(Q_CAMS),
        torch.from_numpy(G_CAMS),
        max_rank=10,
    )
    np.testing.assert_allclose(cmc, EXPECTED_CMC10, rtol=1e-6)
    assert mAP == pytest.approx(EXPECTED_MAP)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 10])
def test_streaming_evaluator_hand_computed(chunk):
    ev = StreamingRankEvaluator(G_PIDS, G_CAMS, max_rank=10)
    dist = torch.from_numpy(DISTMAT)
    for s in range(0, 4, chunk):
        ev.update(dist[s : s + chunk], Q_PIDS[s : s + chunk], Q_CAMS[s : s + chunk])
    result = ev.compute()
    np.testing.assert_allclose(result["cmc"], EXPECTED_CMC10)
    assert result["mAP"] == pytest.approx(EXPECTED_MAP)
    assert result["mINP"] == pytest.approx(EXPECTED_MINP)
    assert result["num_valid_queries"] == 3


def _random_ids(rng, num_q, num_g, num_ids=12, num_cams=3):
    q_pids = rng.integers(0, num_ids + 2, num_q)  # some query ids absent from the gallery
    g_pids = rng.integers(-1, num_ids, num_g)  # -1: junk
    return q_pids, g_pids, rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)


@pytest.mark.parametrize("chunk", [1, 5, 64, 1000])
def test_streaming_equals_full_with_many_ties(chunk):
    # Integer distances in 0..4 over a 300-image gallery: nearly every comparison is a tie,
    # so this only passes if both sides break ties by gallery index (stable sort).
    rng = np.random.default_rng(1)
    q_pids, g_pids, q_cams, g_cams = _random_ids(rng, 70, 300)
    distmat = rng.integers(0, 5, (70, 300)).astype(np.float32)
    full = evaluate_rank_full(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    ev = StreamingRankEvaluator(g_pids, g_cams, max_rank=50)
    for s in range(0, 70, chunk):
        ev.update(torch.from_numpy(distmat[s : s + chunk]), q_pids[s : s + chunk], q_cams[s : s + chunk])
    got = ev.compute()
    assert got["num_valid_queries"] == full["num_valid_queries"]
    np.testing.assert_allclose(got["cmc"], full["cmc"], rtol=0, atol=1e-12)
    assert got["mAP"] == pytest.approx(full["mAP"], abs=1e-12)
    assert got["mINP"] == pytest.approx(full["mINP"], abs=1e-12)


def _features(rng, n, dims, dtype):
    return {name: torch.from_numpy(rng.standard_normal((n, d))).to(dtype) for name, d in dims.items()}


@pytest.mark.parametrize("chunk", [1, 7, 40, 500])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_evaluate_features_equals_full(chunk, dtype):
    rng = np.random.default_rng(2)
    dims = {"global": 16, "spatial": 48}
    qf, gf = _features(rng, 40, dims, dtype), _features(rng, 250, dims, dtype)
    q_pids, g_pids, q_cams, g_cams = _random_ids(rng, 40, 250)
    got = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, chunk_size=chunk, max_rank=20)
    assert set(got) == {"global", "spatial", "fusion"}
    dists = {n: cosine_distance(qf[n], gf[n]) for n in dims}
    dists["fusion"] = dists["global"] + dists["spatial"]
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for name, dist in dists.items():
        full = evaluate_rank_full(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
        assert got[name]["num_valid_queries"] == full["num_valid_queries"]
        np.testing.assert_allclose(got[name]["cmc"], full["cmc"], atol=tol)
        assert got[name]["rank1"] == pytest.approx(full["cmc"][0], abs=tol)
        assert got[name]["rank5"] == pytest.approx(full["cmc"][4], abs=tol)
        assert got[name]["rank10"] == pytest.approx(full["cmc"][9], abs=tol)
        assert got[name]["mAP"] == pytest.approx(full["mAP"], abs=tol)
        assert got[name]["mINP"] == pytest.approx(full["mINP"], abs=tol)


def test_evaluate_features_half_precision_and_no_fusion():
    rng = np.random.default_rng(3)
    qf, gf = _features(rng, 30, {"global": 32}, torch.float16), _features(rng, 120, {"global": 32}, torch.float16)
    q_pids, g_pids, q_cams, g_cams = _random_ids(rng, 30, 120)
    # "spatial" is absent, so no fusion entry; max_rank < 10 still reports rank10.
    got = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, chunk_size=8, max_rank=5)
    assert set(got) == {"global"}
    full = evaluate_rank_full(cosine_distance(qf["global"], gf["global"]), q_pids, g_pids, q_cams, g_cams, max_rank=10)
    assert got["global"]["cmc"].shape == (5,)
    assert got["global"]["rank10"] == pytest.approx(full["cmc"][9], abs=1e-6)
    assert got["global"]["mAP"] == pytest.approx(full["mAP"], abs=1e-6)


def test_cosine_distance_definition():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    expected = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])  # a zero vector is at distance 1
    torch.testing.assert_close(cosine_distance(a, b), expected)


def test_no_valid_query_raises():
    distmat = np.zeros((2, 3))
    # q0's only match shares its camera, q1's identity is absent, the rest is junk.
    with pytest.raises(ValueError, match="no query has a valid match"):
        evaluate_rank(distmat, [1, 5], [1, -1, 2], [0, 0], [0, 1, 1])
    feats = {"global": torch.ones(2, 4)}, {"global": torch.ones(3, 4)}
    with pytest.raises(ValueError, match="no query has a valid match"):
        evaluate_features(*feats, [1, 5], [1, -1, 2], [0, 0], [0, 1, 1])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"q_pids": [1, 2]}, "q_pids"),
        ({"q_camids": [0]}, "q_camids"),
        ({"g_pids": [1, 2]}, "g_pids"),
        ({"g_camids": [0, 1, 2, 3]}, "g_camids"),
    ],
)
def test_evaluate_rank_length_errors_name_argument(kwargs, name):
    args = {
        "distmat": np.zeros((3, 5)),
        "q_pids": [1, 2, 3],
        "g_pids": [1, 2, 3, 1, 2],
        "q_camids": [0, 0, 0],
        "g_camids": [1, 1, 1, 1, 1],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        evaluate_rank(**args)


def test_evaluate_features_errors_name_argument():
    qf, gf = {"global": torch.ones(3, 4)}, {"global": torch.ones(5, 4)}
    ids = dict(q_pids=[1, 2, 3], g_pids=[1, 2, 3, 1, 2], q_camids=[0, 0, 0], g_camids=[1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"query_feats\['global'\].*q_pids"):
        evaluate_features(qf, gf, **{**ids, "q_pids": [1, 2], "q_camids": [0, 0]})
    with pytest.raises(ValueError, match=r"gallery_feats\['global'\].*g_pids"):
        evaluate_features(qf, gf, **{**ids, "g_pids": [1, 2, 3, 1], "g_camids": [1, 1, 1, 1]})
    with pytest.raises(ValueError, match="q_camids"):
        evaluate_features(qf, gf, **{**ids, "q_camids": [0]})
    with pytest.raises(ValueError, match=r"gallery_feats\['global'\] has 6"):
        evaluate_features(qf, {"global": torch.ones(5, 6)}, **ids)
    with pytest.raises(ValueError, match="same feature names"):
        evaluate_features(qf, {"spatial": torch.ones(5, 4)}, **ids)
    with pytest.raises(ValueError, match="chunk_size"):
        evaluate_features(qf, gf, **ids, chunk_size=0)
    with pytest.raises(ValueError, match="max_rank"):
        evaluate_rank(np.zeros((3, 5)), ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"], max_rank=0)


def test_cosine_distance_half_precision_blocks(monkeypatch):
    # float16 galleries on the CPU are upcast block by block; blocks of 7 rows cross the
    # 30-row gallery unevenly, so a wrong offset would show.
    import scstn_vcn.metrics.distance as distance

    monkeypatch.setattr(distance, "_CPU_UPCAST_BLOCK", 7)
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(5, 16, generator=gen).half(), torch.randn(30, 16, generator=gen).half()
    expected = 1 - torch.nn.functional.normalize(a.float()) @ torch.nn.functional.normalize(b.float()).T
    got = cosine_distance(a, b)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
