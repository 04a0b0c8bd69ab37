"""The gallery pass (scstn_vcn.metrics.gallery_pass) ranks exactly as a full sort does.

References: ``evaluate_rank_full`` (a per-query numpy argsort) on the full distance matrix, float64 and
float32, and the streaming path (``evaluate_features(gallery_pass=False)``), whose per-chunk sums the
pass reproduces bit for bit at the same chunk size.
"""

import numpy as np
import pytest
import torch

from scstn_vcn.metrics import gallery_pass as gp
from scstn_vcn.metrics.distance import cosine_distance
from scstn_vcn.metrics.query_expansion import QueryExpansionConfig
from scstn_vcn.metrics.rank import evaluate_rank_full
from scstn_vcn.metrics.rerank import RerankConfig
from scstn_vcn.metrics.streaming import StreamingRankEvaluator, evaluate_features

NAMES = ("global", "spatial")
CMC_LEN = 20


def _ids(rng, num_q, num_g, num_ids=30, num_cams=4):
    # Query ids 30..31 are absent from the gallery (no positives); -1 is junk on both sides.
    q_pids = rng.integers(-1, num_ids + 2, num_q)
    g_pids = rng.integers(-1, num_ids, num_g)
    return q_pids, g_pids, rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)


def _clustered(rng, pids, centres, noise, dim):
    """Rows near their identity's centre (junk and unknown ids: anywhere), so positives tend to rank
    high but some negatives come before them."""
    out = rng.standard_normal((pids.shape[0], dim)) * noise
    known = (pids >= 0) & (pids < centres.shape[0])
    out[known] += centres[pids[known]]
    out[~known] += rng.standard_normal((int((~known).sum()), dim))
    return out


def _data(seed=0, num_q=37, num_g=1003, dims=(24, 40), noise=1.2, dtype=torch.float32):
    rng = np.random.default_rng(seed)
    ids = _ids(rng, num_q, num_g)
    qf, gf = {}, {}
    for name, dim in zip(NAMES, dims):
        centres = rng.standard_normal((30, dim))
        qf[name] = torch.from_numpy(_clustered(rng, ids[0], centres, noise, dim)).to(dtype)
        gf[name] = torch.from_numpy(_clustered(rng, ids[1], centres, noise, dim)).to(dtype)
    return qf, gf, ids


def _pass(qf, gf, ids, *, chunk, block_rows, fusion=NAMES, evaluator_type=StreamingRankEvaluator, **kwargs):
    ids = tuple(np.asarray(x, dtype=np.int64) for x in ids)
    return gp.evaluate_gallery_pass(
        qf,
        gf,
        list(qf),
        tuple(fusion),
        ids,
        device="cpu",
        cmc_len=CMC_LEN,
        chunk_size=chunk,
        evaluator_type=evaluator_type,
        block_rows=block_rows,
        **kwargs,
    )


def _streaming(qf, gf, ids, chunk, **kwargs):
    return evaluate_features(qf, gf, *ids, chunk_size=chunk, max_rank=CMC_LEN, fprs=None, gallery_pass=False, **kwargs)


def _distances(qf, gf, dtype, chunk=None):
    """Full matrices; with ``chunk`` computed in query chunks of that size, as the pass and the streaming
    path do (a matmul of other shapes may round the last bit differently, which matters for near ties)."""
    step = chunk or next(iter(qf.values())).shape[0]
    dist = {
        n: torch.cat(
            [cosine_distance(qf[n][s : s + step].to(dtype), gf[n].to(dtype)) for s in range(0, len(qf[n]), step)]
        )
        for n in qf
    }
    dist["fusion"] = dist["global"] + dist["spatial"]
    return dist


def _assert_same(got, want, exact=True):
    assert got["num_valid_queries"] == want["num_valid_queries"]
    np.testing.assert_array_equal(got["cmc"], want["cmc"][:CMC_LEN])
    for key in ("mAP", "mINP"):
        if exact:
            assert got[key] == want[key], key
        else:
            assert got[key] == pytest.approx(want[key], rel=0, abs=1e-12), key


@pytest.mark.parametrize(("chunk", "block_rows"), [(5, 100), (16, 333), (128, 1003), (7, 4096), (37, 1)])
def test_equals_the_full_sort_and_the_streaming_path(chunk, block_rows):
    qf, gf, ids = _data()
    got = _pass(qf, gf, ids, chunk=chunk, block_rows=block_rows)
    assert set(got) == {"global", "spatial", "fusion"}
    streaming = _streaming(qf, gf, ids, chunk)
    for view, dist in _distances(qf, gf, torch.float32).items():
        _assert_same(got[view], streaming[view])  # same ranks, same order of the sums
        _assert_same(got[view], evaluate_rank_full(dist, *ids, max_rank=CMC_LEN), exact=False)
    # Non-trivial data: queries without positives, negatives before positives.
    assert 0 < got["fusion"]["num_valid_queries"] < 37
    assert 0.2 < got["fusion"]["mAP"] < 0.95


def _near_negatives(dist, ids, margin):
    """Per gallery item: is it a kept negative within ``margin`` of a positive of some query?"""
    q_pids, g_pids, q_cams, g_cams = ids
    d = dist.numpy()
    same = q_pids[:, None] == g_pids[None, :]
    kept = (g_pids[None, :] != -1) & ~(same & (q_cams[:, None] == g_cams[None, :]))
    near = np.zeros(d.shape[1], dtype=bool)
    for i in range(d.shape[0]):
        pos = np.sort(d[i, kept[i] & same[i]])
        if pos.size:
            at = np.clip(np.searchsorted(pos, d[i]), 1, pos.size - 1)
            gap = np.minimum(np.abs(d[i] - pos[at - 1]), np.abs(d[i] - pos[at]) if pos.size > 1 else np.inf)
            near |= kept[i] & ~same[i] & (np.minimum(gap, np.abs(d[i] - pos[0])) <= margin)
    return near


def test_float32_ranks_are_those_of_float64_when_no_negative_is_near_a_positive():
    qf, gf, ids = _data(seed=1)
    # Without the gallery items that are, for some query, a negative within 1e-5 of a positive, float32
    # rounding cannot reorder a negative and a positive.
    near = np.zeros(ids[1].shape[0], dtype=bool)
    for dist in _distances(qf, gf, torch.float64).values():
        near |= _near_negatives(dist, ids, 1e-5)
    assert 0 < near.sum() < 200
    keep = torch.from_numpy(~near)
    gf = {n: g[keep] for n, g in gf.items()}
    ids = (ids[0], ids[1][~near], ids[2], ids[3][~near])
    got = _pass(qf, gf, ids, chunk=9, block_rows=250)
    for view, dist in _distances(qf, gf, torch.float64).items():
        assert not _near_negatives(dist, ids, 1e-5).any()
        _assert_same(got[view], evaluate_rank_full(dist, *ids, max_rank=CMC_LEN), exact=False)


def test_float64_features_equal_the_float64_reference():
    qf, gf, ids = _data(seed=2, dtype=torch.float64)
    got = _pass(qf, gf, ids, chunk=10, block_rows=128)
    for view, dist in _distances(qf, gf, torch.float64).items():
        _assert_same(got[view], evaluate_rank_full(dist, *ids, max_rank=CMC_LEN), exact=False)
        _assert_same(got[view], _streaming(qf, gf, ids, 10)[view])


def test_duplicated_gallery_rows_tie_by_index():
    # Each gallery row appears three times at scattered indices, under different pids and cameras: exact
    # ties between positives, and between positives and negatives, that only the index breaks.
    rng = np.random.default_rng(3)
    qf, gf, ids = _data(seed=3, num_g=301)
    copies = rng.permutation(np.tile(np.arange(301), 3))
    gf = {n: g[torch.from_numpy(copies)].contiguous() for n, g in gf.items()}
    q_pids, _, q_cams, _ = ids
    g_pids, g_cams = rng.integers(-1, 30, 903), rng.integers(0, 4, 903)
    ids = (q_pids, g_pids, q_cams, g_cams)
    for n in NAMES:
        d = cosine_distance(qf[n], gf[n]).numpy()
        assert (d[:, copies == copies[0]] == d[:, [int(np.flatnonzero(copies == copies[0])[0])]]).all()
    for chunk, block_rows in ((8, 97), (37, 903)):
        got = _pass(qf, gf, ids, chunk=chunk, block_rows=block_rows)
        streaming = _streaming(qf, gf, ids, chunk)
        for view, dist in _distances(qf, gf, torch.float32).items():
            _assert_same(got[view], streaming[view])
            _assert_same(got[view], evaluate_rank_full(dist, *ids, max_rank=CMC_LEN), exact=False)


class _Spy:
    """Records what the pass's views held when ranking: near ties and counted negatives."""

    def __init__(self, monkeypatch):
        self.near = self.counted = 0
        ranks = gp._ViewPass.ranks

        def spy(view, *args):
            self.near += sum(part[0].numel() for part in view.near)
            self.counted += int(view.counts.sum())
            return ranks(view, *args)

        monkeypatch.setattr(gp._ViewPass, "ranks", spy)


def test_near_ties_are_ranked_exactly(monkeypatch):
    # Many negatives are positives' rows nudged by ~1e-6 (relative), so their distances lie within
    # delta of the positives' estimates, on both sides; some are exact copies (ties by index).
    qf, gf, ids = _data(seed=4, num_g=600)
    q_pids, g_pids, q_cams, g_cams = ids
    rng = np.random.default_rng(4)
    source = rng.choice(np.flatnonzero(g_pids >= 0), 400)
    extra_pids = (g_pids[source] + 1) % 30  # another identity: negatives of the source's queries
    g_pids = np.concatenate([g_pids, extra_pids])
    g_cams = np.concatenate([g_cams, rng.integers(0, 4, 400)])
    for n in NAMES:
        nudge = 1 + rng.choice([0.0, 1e-6, -1e-6, 3e-6, -3e-6], (400, 1))
        gf[n] = torch.cat([gf[n], (gf[n][source].double() * torch.from_numpy(nudge)).float()])
    ids = (q_pids, g_pids, q_cams, g_cams)
    spy = _Spy(monkeypatch)
    for chunk, block_rows in ((6, 150), (37, 1000)):
        got = _pass(qf, gf, ids, chunk=chunk, block_rows=block_rows)
        streaming = _streaming(qf, gf, ids, chunk)
        for view, dist in _distances(qf, gf, torch.float32, chunk).items():
            _assert_same(got[view], streaming[view])
            _assert_same(got[view], evaluate_rank_full(dist, *ids, max_rank=CMC_LEN), exact=False)
    assert spy.near > 300 and spy.counted > 1000  # both kinds of negatives were there


class _CountingEvaluator(StreamingRankEvaluator):
    rows = 0

    def update(self, dist_chunk, q_pids, q_camids):
        type(self).rows += dist_chunk.shape[0]
        super().update(dist_chunk, q_pids, q_camids)


@pytest.mark.parametrize("delta", [0.0, 3e-8])
def test_the_fallback_for_positives_outside_the_bound(delta):
    # delta 0 sends (nearly) every query back to the sorting path, 3e-8 some of them: same metrics.
    qf, gf, ids = _data(seed=5)
    _CountingEvaluator.rows = 0
    got = _pass(qf, gf, ids, chunk=8, block_rows=300, evaluator_type=_CountingEvaluator, _delta_per_branch=delta)
    assert _CountingEvaluator.rows > 10
    streaming = _streaming(qf, gf, ids, 8)
    for view, dist in _distances(qf, gf, torch.float32).items():
        _assert_same(got[view], streaming[view], exact=False)
        _assert_same(got[view], evaluate_rank_full(dist, *ids, max_rank=CMC_LEN), exact=False)


def test_non_finite_features_go_to_the_fallback():
    # A NaN gallery row (a positive of some queries) and a NaN query: the check fails for them and the
    # sorting path ranks them (NaN distances last), as without the pass.
    qf, gf, ids = _data(seed=6)
    gf["global"][int(np.flatnonzero(ids[1] == ids[0][0])[0])] = float("nan")
    qf["spatial"][3] = float("nan")
    _CountingEvaluator.rows = 0
    got = _pass(qf, gf, ids, chunk=8, block_rows=256, evaluator_type=_CountingEvaluator)
    assert _CountingEvaluator.rows > 0
    streaming = _streaming(qf, gf, ids, 8)
    for view in got:
        _assert_same(got[view], streaming[view], exact=False)


# torch warns once that a read-only map is not writable; the pass only reads it.
@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_half_precision_and_memory_mapped_features(tmp_path):
    qf, gf, ids = _data(seed=7, dtype=torch.float16)
    mapped = {}
    for n in NAMES:
        np.save(tmp_path / f"{n}.npy", gf[n].numpy())
        mapped[n] = np.load(tmp_path / f"{n}.npy", mmap_mode="r")
    assert isinstance(mapped["global"], np.memmap)
    got = evaluate_features(qf, mapped, *ids, chunk_size=11, max_rank=CMC_LEN, fprs=None, gallery_pass=True)
    want = _streaming(qf, gf, ids, 11)
    assert set(got) == set(want)
    for view in got:
        _assert_same(got[view], want[view])
        assert got[view]["rank1"] == want[view]["rank1"] and got[view]["rank10"] == want[view]["rank10"]
    full = evaluate_rank_full(_distances(qf, gf, torch.float32)["fusion"], *ids, max_rank=CMC_LEN)
    _assert_same(got["fusion"], full, exact=False)


def test_one_feature_without_fusion(monkeypatch):
    monkeypatch.setattr(gp, "_ESTIMATE_PAIRS", 7)  # the positives' estimates in many pieces
    qf, gf, ids = _data(seed=8)
    got = _pass({"global": qf["global"]}, {"global": gf["global"]}, ids, chunk=13, block_rows=200, fusion=())
    assert set(got) == {"global"}
    _assert_same(got["global"], _streaming({"global": qf["global"]}, {"global": gf["global"]}, ids, 13)["global"])


def test_no_valid_query_is_an_error():
    qf, gf, (q_pids, g_pids, q_cams, g_cams) = _data(seed=9)
    with pytest.raises(ValueError, match="no query has a valid match"):
        _pass(qf, gf, (q_pids + 100, g_pids, q_cams, g_cams), chunk=8, block_rows=100)
    with pytest.raises(ValueError, match="block_rows must be a positive integer"):
        _pass(qf, gf, (q_pids, g_pids, q_cams, g_cams), chunk=8, block_rows=0)


def test_positive_pairs():
    q_pids, q_cams = np.array([3, -1, 5, 3, 9]), np.array([0, 0, 1, 1, 0])
    g_pids = np.array([5, 3, -1, 3, 5, 3, 7])
    g_cams = np.array([1, 1, 0, 0, 0, 1, 0])
    qi, gi = gp.positive_pairs(q_pids, q_cams, g_pids, g_cams)
    assert list(zip(qi.tolist(), gi.tolist())) == [(0, 1), (0, 5), (2, 4), (3, 3)]


def test_when_the_pass_is_used(monkeypatch):
    assert gp.use_gallery_pass(None, gp.GALLERY_PASS_MIN_ITEMS, record_topk=None, fprs=None)
    assert gp.use_gallery_pass(None, gp.GALLERY_PASS_MIN_ITEMS, record_topk=None, fprs=())
    assert not gp.use_gallery_pass(None, gp.GALLERY_PASS_MIN_ITEMS - 1, record_topk=None, fprs=None)
    assert not gp.use_gallery_pass(None, gp.GALLERY_PASS_MIN_ITEMS, record_topk=5, fprs=None)
    assert not gp.use_gallery_pass(None, gp.GALLERY_PASS_MIN_ITEMS, fprs=(1e-3,))
    assert gp.use_gallery_pass(True, 10, record_topk=None) and not gp.use_gallery_pass(False, 10**7)
    # evaluate_features takes it above the threshold without being asked.
    qf, gf, ids = _data(seed=10)
    calls = []
    original = gp.evaluate_gallery_pass

    def spy(*args, **kwargs):
        calls.append(kwargs["chunk_size"])
        return original(*args, **kwargs)

    monkeypatch.setattr("scstn_vcn.metrics.streaming.evaluate_gallery_pass", spy)
    evaluate_features(qf, gf, *ids, chunk_size=9, max_rank=CMC_LEN, fprs=None)
    assert calls == []
    monkeypatch.setattr(gp, "GALLERY_PASS_MIN_ITEMS", 1000)
    got = evaluate_features(qf, gf, *ids, chunk_size=9, max_rank=CMC_LEN, fprs=None)
    assert calls == [9]
    want = _streaming(qf, gf, ids, 9)
    for view in got:
        _assert_same(got[view], want[view])
    evaluate_features(qf, gf, *ids, chunk_size=9)  # default fprs: sorted rows needed
    assert calls == [9]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("record_topk", 5),
        ("query_expansion", QueryExpansionConfig(qe_k=2)),
        ("fprs", (1e-3,)),
    ],
)
def test_options_that_need_sorted_rows_are_refused(option, value):
    qf, gf, ids = _data(seed=11, num_g=100)
    kwargs = {"fprs": None, option: value}
    with pytest.raises(ValueError, match=f"gallery_pass=True cannot be combined with {option}"):
        evaluate_features(qf, gf, *ids, gallery_pass=True, **kwargs)


def test_gallery_pass_must_be_a_bool_or_none():
    qf, gf, ids = _data(seed=12, num_g=100)
    with pytest.raises(TypeError, match="gallery_pass must be True, False or None"):
        evaluate_features(qf, gf, *ids, fprs=None, gallery_pass="yes")


@pytest.mark.parametrize(
    ("chunk", "block_rows", "k1", "k2", "lam"), [(9, 250, 6, 3, 0.3), (37, 1003, 5, 1, 0.0), (4, 77, 8, 8, 1.0)]
)
def test_reranked_rows_equal_the_streaming_path(chunk, block_rows, k1, k2, lam):
    """The "+rk" rows of the pass: the same ranks as the sorts of the streaming path's re-ranked chunks,
    for every view, at odd block and chunk sizes, lambda 0 (Jaccard only) and 1 (D^2 only)."""
    qf, gf, ids = _data(seed=21, noise=0.9)
    rerank = RerankConfig(k1=k1, k2=k2, lambda_value=lam)
    got = evaluate_features(
        qf, gf, *ids, chunk_size=chunk, max_rank=CMC_LEN, fprs=None, rerank=rerank, gallery_pass=True
    )
    want = _streaming(qf, gf, ids, chunk, rerank=rerank)
    assert set(got) == set(want) == {"global", "spatial", "fusion", "global+rk", "spatial+rk", "fusion+rk"}
    for view in want:
        _assert_same(got[view], want[view])
    assert got["fusion+rk"]["neighbours"] == {
        **want["fusion+rk"]["neighbours"],
        "seconds": got["fusion+rk"]["neighbours"]["seconds"],
    }
    # the re-ranking changes the ranking (the rows test something)
    assert got["fusion+rk"]["mAP"] != got["fusion"]["mAP"] or lam == 1.0


def test_reranked_rows_match_a_dense_reference_and_survive_the_fallback(monkeypatch):
    """Against the dense published algorithm (tests/dense_rerank.py) through evaluate_rank_full, and with
    delta forced tiny so that every query is evaluated again by the fallback."""
    from dense_rerank import all_distances, k_reciprocal_dense

    qf, gf, ids = _data(seed=22, num_q=23, num_g=401, noise=0.9, dtype=torch.float64)
    rerank = RerankConfig(k1=7, k2=3)
    encodings, report = _encodings(qf, gf, rerank)
    fallback_rows = []
    original = gp._RerankedView.rows

    def spy(self, dist_rows, rows):
        fallback_rows.append(len(rows))
        return original(self, dist_rows, rows)

    monkeypatch.setattr(gp._RerankedView, "rows", spy)
    for delta in (None, -1.0):
        # a negative bound fails every check: every query is evaluated again by the fallback
        monkeypatch.setattr(gp._RerankedView, "delta", lambda self, e, qi, d, forced=delta: forced or 1e-12)
        got = _pass(qf, gf, ids, chunk=5, block_rows=128, encodings=encodings, _delta_per_branch=delta)
        for view, branches in (("global", ("global",)), ("fusion", NAMES)):
            full = all_distances({b: qf[b].numpy() for b in branches}, {b: gf[b].numpy() for b in branches})
            dense = k_reciprocal_dense(full, qf["global"].shape[0], k1=7, k2=3, lambda_value=0.3)
            want = evaluate_rank_full(dense, *ids, max_rank=CMC_LEN)
            assert got[view + "+rk"]["mAP"] == pytest.approx(want["mAP"], abs=1e-12)
            np.testing.assert_allclose(got[view + "+rk"]["cmc"], want["cmc"][:CMC_LEN], atol=1e-12)
        # three re-ranked views (global, spatial, fusion), each query with positives evaluated again
        assert sum(fallback_rows) == (3 * got["global"]["num_valid_queries"] if delta else 0)
        fallback_rows.clear()


def _encodings(qf, gf, rerank):
    from scstn_vcn.metrics.streaming import _rerank_encodings

    return _rerank_encodings(qf, gf, list(NAMES), NAMES, rerank, None, 64, torch.device("cpu"))
