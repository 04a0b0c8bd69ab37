"""Streaming (query-chunked) evaluation, equal to ``evaluate_rank_full`` on the full matrix.

The full distance matrix at MSMT17 scale (11,659 x 82,161) is 3.8 GB in float32 per feature,
so it is never built. Queries are processed in chunks of ``chunk_size`` rows; per chunk the
(chunk_size, num_gallery) distances are computed on ``device``, each row is sorted there with
a stable sort (ties by gallery index, as in ``evaluate_rank``), and the per-query results are
folded into running sums (a histogram of first-positive ranks for CMC, sums of AP and INP).

Ranks of the positives among the kept gallery images come from one cumulative count of kept
images along the sorted row, read at the positives' positions; everything is vectorised over
the chunk, with no Python loop over queries.

Memory: peak extra memory is O(chunk_size x num_gallery). Per (query, gallery) element the
chunk holds 4 B per distance matrix (two alive with fusion: the current feature's and the
running sum), the sort's 4 B values and 8 B indices, 1 B each for the keep/positive code
before and after the gather, and 4 B for the int32 running count of kept images; not all at
once. Measured on the CPU (peak RSS, benchmarks/test_evaluation.py): about 21-26 B per element,
so the default ``chunk_size=512`` against MSMT17's 82,161 gallery images needs 0.85 GB
(512 x 82,161 x ~21 B), under the ~2 GB budget with room for the GPU sort's scratch space.
The gallery features themselves are moved to ``device`` once (every chunk needs them).
Time is dominated by the per-row sort on the CPU and by the matmul for wide features.

With ``rerank`` the same query chunks are also re-ranked (scstn_vcn.metrics.rerank): before the
chunks, one blocked pass over all (q + g)^2 distances finds every item's k1 + 1 nearest items (for
each feature and the fusion at once), then each chunk adds about three more (chunk_size, num_gallery)
matrices (the squared distances, the Jaccard distances, the result), plus O((q + g) k1) for the
sparse encodings. ``query_expansion`` holds one expanded copy of the features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .distance import _as_feature_tensor, cosine_distance_rows, inverse_norms
from .gallery_pass import evaluate_gallery_pass, use_gallery_pass
from .item_features import ItemFeatures
from .neighbours import NeighbourSearch, find_neighbours
from .per_query import PerQueryRecorder, check_topk
from .query_expansion import QueryExpansionConfig, alpha_query_expansion
from .rank import JUNK_PID, as_1d_array, check_dist_chunk, check_max_rank, no_valid_query_error
from .rerank import KReciprocalEncoding, RerankConfig
from .verification import DEFAULT_FPRS, PairMasks, StreamingVerification, check_fprs, verification_row

DEFAULT_CHUNK_SIZE = 512

# Codes stored per (query, gallery) pair before sorting: discarded, kept negative, kept positive.
_DISCARDED, _NEGATIVE, _POSITIVE = 0, 1, 2


class StreamingRankEvaluator:
    """Accumulates CMC / mAP / mINP over chunks of distance-matrix rows.

    ``update(dist_chunk, q_pids, q_camids)`` takes a (B, num_gallery) tensor of distances for
    B queries; after all chunks, ``compute()`` returns the same dict as ``evaluate_rank_full``
    on the stacked rows (same protocol, same stable tie-breaking). With ``record_topk=k`` it also keeps
    each query's AP, first-match rank and first k sorted gallery items (scstn_vcn.metrics.per_query),
    returned as ``compute()["per_query"]``.
    """

    def __init__(self, g_pids, g_camids, max_rank: int = 50, device=None, record_topk: int | None = None):
        g_pids_np = as_1d_array("g_pids", g_pids)
        g_camids_np = as_1d_array("g_camids", g_camids, g_pids_np.shape[0], "g_pids")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.max_rank = check_max_rank(max_rank)
        self.g_pids = torch.from_numpy(g_pids_np).to(self.device)
        self.g_camids = torch.from_numpy(g_camids_np).to(self.device)
        self.not_junk = self.g_pids != JUNK_PID
        self.first_rank_hist = torch.zeros(self.max_rank, dtype=torch.int64, device=self.device)
        self.ap_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.inp_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.num_valid = torch.zeros((), dtype=torch.int64, device=self.device)
        self.recorder = PerQueryRecorder(record_topk) if record_topk is not None else None

    @property
    def num_gallery(self) -> int:
        return self.g_pids.shape[0]

    def update(self, dist_chunk: torch.Tensor, q_pids, q_camids) -> None:
        b = check_dist_chunk(dist_chunk, self.num_gallery)
        q_pids = torch.as_tensor(as_1d_array("q_pids", q_pids, b, "dist_chunk's rows"), device=self.device)
        q_camids = torch.as_tensor(as_1d_array("q_camids", q_camids, b, "dist_chunk's rows"), device=self.device)
        dist_chunk = dist_chunk.to(self.device)

        same_pid = q_pids[:, None] == self.g_pids[None, :]
        keep = self.not_junk[None, :] & ~(same_pid & (q_camids[:, None] == self.g_camids[None, :]))
        code = keep.to(torch.uint8) + (keep & same_pid).to(torch.uint8)
        del same_pid, keep

        order = torch.sort(dist_chunk, dim=1, stable=True).indices
        code = code.gather(1, order)
        if self.recorder is not None:
            self.recorder.add_sorted(dist_chunk, order, code)
        del order
        # kept_rank[i, p] = 1-based rank among kept images of the image at sorted position p.
        kept_rank = (code != _DISCARDED).cumsum(1, dtype=torch.int32)
        rows, cols = (code == _POSITIVE).nonzero(as_tuple=True)  # row-major: positives in rank order
        ranks = kept_rank[rows, cols].to(torch.float64)
        del kept_rank, code

        counts = torch.bincount(rows, minlength=b)  # positives per query
        valid = counts > 0
        starts = torch.cumsum(counts, 0) - counts  # offset of each query's first positive
        # j-th positive of its query (1-based), so that AP = mean_j j / r_j.
        ordinal = torch.arange(rows.shape[0], device=self.device) - starts[rows] + 1
        ap = torch.zeros(b, dtype=torch.float64, device=self.device).index_add_(0, rows, ordinal / ranks)
        n = counts[valid]
        first = ranks[starts[valid]]
        last = ranks[starts[valid] + n - 1]

        ap, inp = ap[valid] / n, n / last
        if self.recorder is not None:
            self.recorder.add_metrics(valid, ap, inp, first, counts)
        self.ap_sum += ap.sum()
        self.inp_sum += inp.sum()
        self.num_valid += valid.sum()
        first = first.to(torch.int64)
        hits = first <= self.max_rank
        self.first_rank_hist += torch.bincount(first[hits] - 1, minlength=self.max_rank)

    def compute(self) -> dict:
        num_valid = int(self.num_valid.item())
        if num_valid == 0:
            raise no_valid_query_error()
        cmc = torch.cumsum(self.first_rank_hist, 0).to(torch.float64) / num_valid
        result = {
            "cmc": cmc.cpu().numpy(),
            "mAP": float(self.ap_sum.item()) / num_valid,
            "mINP": float(self.inp_sum.item()) / num_valid,
            "num_valid_queries": num_valid,
        }
        if self.recorder is not None:
            result["per_query"] = self.recorder.compute()
        return result


def _summary(result: dict, max_rank: int) -> dict:
    cmc = result["cmc"]
    return {
        "rank1": float(cmc[0]),
        "rank5": float(cmc[4]),
        "rank10": float(cmc[9]),
        "mAP": result["mAP"],
        "mINP": result["mINP"],
        "cmc": cmc[:max_rank],
        "num_valid_queries": result["num_valid_queries"],
        **({"per_query": result["per_query"]} if "per_query" in result else {}),
        **(verification_row(result["verification"]) if "verification" in result else {}),
        **({"neighbours": result["neighbours"]} if "neighbours" in result else {}),
    }


def _check_features(query_feats: Mapping, gallery_feats: Mapping, num_q: int, num_g: int) -> list[str]:
    if not isinstance(query_feats, Mapping) or not isinstance(gallery_feats, Mapping):
        raise TypeError("query_feats and gallery_feats must be dicts mapping a feature name to a (N, D) tensor")
    if set(query_feats) != set(gallery_feats):
        raise ValueError(
            f"query_feats and gallery_feats must have the same feature names, got "
            f"query_feats: {sorted(query_feats)} and gallery_feats: {sorted(gallery_feats)}"
        )
    if not query_feats:
        raise ValueError("query_feats is empty: give at least one feature")
    if "fusion" in query_feats:
        raise ValueError("query_feats must not contain a feature named 'fusion' (that name is the fused result)")
    for name in query_feats:
        q = _as_feature_tensor(f"query_feats[{name!r}]", query_feats[name])
        g = _as_feature_tensor(f"gallery_feats[{name!r}]", gallery_feats[name])
        if q.shape[0] != num_q:
            raise ValueError(f"query_feats[{name!r}] has {q.shape[0]} rows but q_pids has length {num_q}")
        if g.shape[0] != num_g:
            raise ValueError(f"gallery_feats[{name!r}] has {g.shape[0]} rows but g_pids has length {num_g}")
        if q.shape[1] != g.shape[1]:
            raise ValueError(
                f"query_feats[{name!r}] has dimension {q.shape[1]} but gallery_feats[{name!r}] has {g.shape[1]}"
            )
    return list(query_feats)


def _check_option(value, cls, name):
    if value is not None and not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__} or None, got {type(value).__name__}")
    return value


@torch.no_grad()
def _evaluate_feature_set(
    query,
    gallery,
    names,
    fusion,
    ids,
    *,
    chunk_size,
    device,
    cmc_len,
    suffix,
    rerank,
    record_topk=None,
    fprs=(),
    neighbours=None,
):
    """{name + suffix: result} for the features and their fusion, and with ``rerank`` also
    {name + suffix + "+rk": result} from the re-ranked distances of the same query chunks."""
    q_pids, g_pids, q_camids, g_camids = ids
    outputs = names + (["fusion"] if fusion else [])
    evaluators = {n + suffix: StreamingRankEvaluator(g_pids, g_camids, cmc_len, device, record_topk) for n in outputs}
    encodings, neighbour_report = _rerank_encodings(
        query, gallery, names, fusion, rerank, neighbours, chunk_size, device
    )
    for view in encodings:
        evaluators[view + suffix + "+rk"] = StreamingRankEvaluator(g_pids, g_camids, cmc_len, device, record_topk)
    # Every row's distances also feed its TPR@FPR accumulator (scstn_vcn.metrics.verification).
    masks = PairMasks(g_pids, g_camids, device) if fprs else None  # each chunk's pair masks, made once
    verifiers = {
        key: StreamingVerification(q_pids, q_camids, g_pids, g_camids, fprs, device, masks=masks)
        for key in evaluators
        if fprs
    }
    gallery = {n: gallery[n].to(device) for n in names}
    g_inv = {n: inverse_norms(g) for n, g in gallery.items()}

    # On the GPU the plain rows multiply float16 / bfloat16 features in their own precision; the re-ranked
    # rows take the float32 product instead, the distances the encoding was built from.
    low_precision = (torch.float16, torch.bfloat16)
    upcast = bool(encodings) and device.type != "cpu" and any(gallery[n].dtype in low_precision for n in names)

    def update(view, dist, exact, start, stop, pids, camids):
        evaluators[view + suffix].update(dist, pids, camids)
        if verifiers:
            verifiers[view + suffix].update(dist, pids, camids)
        if view in encodings:
            rk = encodings[view].distances(start, stop, dist if exact is None else exact)
            evaluators[view + suffix + "+rk"].update(rk, pids, camids)
            if verifiers:
                verifiers[view + suffix + "+rk"].update(rk, pids, camids)

    for start in range(0, q_pids.shape[0], int(chunk_size)):
        stop = min(start + int(chunk_size), q_pids.shape[0])
        pids, camids = q_pids[start:stop], q_camids[start:stop]
        fused = fused_exact = None
        for n in names:
            q = query[n][start:stop].to(device)
            dist = cosine_distance_rows(q, gallery[n], inverse_norms(q), g_inv[n])
            exact = cosine_distance_rows(q, gallery[n], inverse_norms(q), g_inv[n], upcast=True) if upcast else None
            update(n, dist, exact, start, stop, pids, camids)
            if n in fusion:
                # Summed in place so at most one extra (chunk, gallery) matrix is alive for fusion.
                fused = dist if fused is None else fused.add_(dist)
                if exact is not None:
                    fused_exact = exact if fused_exact is None else fused_exact.add_(exact)
            del dist, exact
        if fusion:
            update("fusion", fused, fused_exact, start, stop, pids, camids)
        del fused, fused_exact
    results = {name: evaluator.compute() for name, evaluator in evaluators.items()}
    for name, verifier in verifiers.items():
        results[name]["verification"] = verifier.compute()
    _add_neighbour_reports(results, encodings, neighbour_report, suffix)
    return results


def _rerank_encodings(query, gallery, names, fusion, rerank, neighbours, chunk_size, device):
    """({view: KReciprocalEncoding}, the neighbour search's report) for every feature and the fusion, or
    ({}, None) without ``rerank``."""
    if rerank is None:
        return {}, None
    items = ItemFeatures(query, gallery, device)
    views = {n: (n,) for n in names}
    if fusion:
        views["fusion"] = fusion
    # One pass over the distance blocks serves every view (the fusion sums the branches' blocks); or the
    # faiss backends of scstn_vcn.metrics.neighbours, one index per view.
    found, report = find_neighbours(items, views, rerank.k1 + 1, neighbours, int(chunk_size))
    encodings = {
        view: KReciprocalEncoding(items, branches, found.pop(view), rerank, int(chunk_size))
        for view, branches in views.items()
    }
    return encodings, report


def _add_neighbour_reports(results, encodings, neighbour_report, suffix=""):
    for view in encodings:
        # how the re-ranked row's neighbours were found: backend, parameters, time, measured recall
        report = {k: v for k, v in neighbour_report.items() if k != "views"}
        report.update(neighbour_report.get("views", {}).get(view, {}))
        results[view + suffix + "+rk"]["neighbours"] = report


@torch.no_grad()
def evaluate_features(
    query_feats: Mapping[str, torch.Tensor],
    gallery_feats: Mapping[str, torch.Tensor],
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    *,
    fusion: Sequence[str] | None = ("global", "spatial"),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device=None,
    max_rank: int = 50,
    rerank: RerankConfig | None = None,
    query_expansion: QueryExpansionConfig | None = None,
    record_topk: int | None = None,
    fprs: Sequence[float] | None = DEFAULT_FPRS,
    neighbours: NeighbourSearch | None = None,
    gallery_pass: bool | None = None,
) -> dict[str, dict]:
    """Cosine-distance evaluation of every feature, and of their fusion, in query chunks; optionally
    with k-reciprocal re-ranking and alpha-query expansion as well.

    For each name in ``query_feats`` (the same names must be in ``gallery_feats``) the gallery
    is ranked by ``cosine_distance``; ``"fusion"`` ranks by the sum of the cosine distances of
    the ``fusion`` features and is computed only when all of them are present (``fusion=None``
    or ``()`` turns it off). Results equal ``evaluate_rank_full`` on the full matrices up to
    float rounding (see the module docstring for memory).

    ``rerank=RerankConfig(k1, k2, lambda_value)`` adds a row ``name + "+rk"`` per feature and for the
    fusion, ranked by the k-reciprocal re-ranked distance of that feature's (or the fusion's) distance
    (scstn_vcn.metrics.rerank: the published algorithm, exact, in O((q + g) k1 + chunk_size * g) memory).
    ``query_expansion=QueryExpansionConfig(qe_k, alpha, qe_times)`` adds rows ``name + "+qe"`` ranked
    on alpha-query-expanded features (scstn_vcn.metrics.query_expansion; one more copy of the features);
    with both, the re-ranked rows are ``name + "+qe+rk"``: re-ranking of the expanded features. The
    plain rows are always there.

    ``record_topk=k`` adds ``"per_query"`` to every row: its PerQueryRecords (scstn_vcn.metrics.per_query:
    each query's AP, INP, first-match rank and first k sorted gallery items), taken from the same sorted
    rows as the metrics, in O(num_query * k) memory.

    ``fprs`` (default 1e-4, 1e-3, 1e-2; None or () turns it off) adds verification to every row, "+rk"
    rows included (scstn_vcn.metrics.verification): over all pairs the protocol keeps, exact, streamed,
    "TPR@FPR=1e-4": the TPR at the ROC point with the largest FPR <= 1e-4, "threshold@FPR=1e-4": its
    distance threshold (same person when distance <= it), and "verification": the points, the pair
    counts and a thinned ROC curve. About 50 MB per row at MSMT17 scale.

    ``neighbours=NeighbourSearch(backend, nprobe, ...)`` chooses how re-ranking finds each item's k1 + 1
    nearest items (scstn_vcn.metrics.neighbours: exact by default; faiss flat or IVF for large galleries);
    the "+rk" rows then hold ``"neighbours"``: the backend, its parameters and the measured recall.
    ``gallery_pass`` (scstn_vcn.metrics.gallery_pass) ranks without sorting rows: one pass over the gallery
    in blocks, counting the negatives before each positive, with the same ranks and metrics as the query
    chunks' sorts, in O(chunk_size x block + num_query x most positives) memory. None (default) uses it
    for galleries of at least GALLERY_PASS_MIN_ITEMS (200,000) items when no option needs sorted rows
    (query_expansion, record_topk None and fprs None or empty; re-ranking is ranked in the same pass);
    True always (a ValueError names the option that needs sorted rows if one is set); False never.
    Features may be memory-mapped numpy arrays (scstn_vcn.metrics.feature_store.open_features): they are
    read a block at a time, never copied whole.

    Returns ``{name: {"rank1", "rank5", "rank10", "mAP", "mINP": float in [0, 1],
    "cmc": array (max_rank,), "num_valid_queries": int}}``. ``device`` defaults to the
    features' device; distances are float32 (float64 for float64 features).
    """
    q_pids = as_1d_array("q_pids", q_pids)
    q_camids = as_1d_array("q_camids", q_camids, q_pids.shape[0], "q_pids")
    g_pids = as_1d_array("g_pids", g_pids)
    g_camids = as_1d_array("g_camids", g_camids, g_pids.shape[0], "g_pids")
    max_rank = check_max_rank(max_rank)
    if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    rerank = _check_option(rerank, RerankConfig, "rerank")
    query_expansion = _check_option(query_expansion, QueryExpansionConfig, "query_expansion")
    neighbours = _check_option(neighbours, NeighbourSearch, "neighbours")
    names = _check_features(query_feats, gallery_feats, q_pids.shape[0], g_pids.shape[0])
    # Against the data's size before any work (the settings' own ranges are checked by their configs).
    for option in (rerank, query_expansion):
        if option is not None:
            option.check_items(q_pids.shape[0], g_pids.shape[0])
    fusion = tuple(fusion or ())
    # The fused views sum the branches in the features' order, as the chunk loop does.
    fusion = tuple(n for n in names if n in fusion) if fusion and all(n in names for n in fusion) else ()

    query = {n: _as_feature_tensor(f"query_feats[{n!r}]", query_feats[n]) for n in names}
    if device is None:
        device = query[names[0]].device
    device = torch.device(device)
    gallery_pass = use_gallery_pass(
        gallery_pass,
        g_pids.shape[0],
        query_expansion=query_expansion,
        record_topk=record_topk,
        fprs=fprs,
    )
    # The gallery pass moves one block at a time to the device.
    gallery = {n: _as_feature_tensor(f"gallery_feats[{n!r}]", gallery_feats[n]) for n in names}
    if not gallery_pass:
        gallery = {n: g.to(device) for n, g in gallery.items()}

    # rank-10 is always reported, so the CMC is accumulated to at least 10 ranks.
    ids = (q_pids, g_pids, q_camids, g_camids)
    settings = {"chunk_size": chunk_size, "device": device, "cmc_len": max(max_rank, 10)}
    settings["record_topk"] = None if record_topk is None else check_topk(record_topk)
    settings["fprs"] = check_fprs(fprs or (), "fprs")
    settings["neighbours"] = neighbours
    if gallery_pass:
        encodings, report = _rerank_encodings(query, gallery, names, fusion, rerank, neighbours, chunk_size, device)
        results = evaluate_gallery_pass(
            query,
            gallery,
            names,
            fusion,
            ids,
            device=device,
            cmc_len=settings["cmc_len"],
            chunk_size=int(chunk_size),
            evaluator_type=StreamingRankEvaluator,
            encodings=encodings,
        )
        _add_neighbour_reports(results, encodings, report)
        return {name: _summary(result, max_rank) for name, result in results.items()}
    results = _evaluate_feature_set(
        query, gallery, names, fusion, ids, suffix="", rerank=None if query_expansion else rerank, **settings
    )
    if query_expansion is not None:
        query, gallery = alpha_query_expansion(
            query, gallery, query_expansion, chunk_size=int(chunk_size), device=device
        )
        results.update(
            _evaluate_feature_set(query, gallery, names, fusion, ids, suffix="+qe", rerank=rerank, **settings)
        )
    return {name: _summary(result, max_rank) for name, result in results.items()}
