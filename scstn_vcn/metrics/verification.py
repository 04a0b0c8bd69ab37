"""Verification (open-set) metrics: TPR at fixed FPRs over all query-gallery pairs, exact, streamed.

Ranking (CMC, mAP) says whether the right person comes first; it does not say which distance means
"same person". Verification does: every (query, gallery) pair the ranking protocol keeps is one trial,

* kept pairs: gallery items of the junk identity -1 are left out, and so are gallery items of the
  query's identity seen by the query's own camera (the protocol of scstn_vcn.metrics.rank); a query
  whose identity has no other-camera image in the gallery still counts, with negatives only (the
  "not in the gallery" case an open-set search must answer);
* positive pair: same identity; negative pair: different identities;
* decision at threshold t: "same person" when distance <= t, so FPR(t) = #negatives with d <= t /
  #negatives and TPR(t) = #positives with d <= t / #positives.

The ROC point reported for a target FPR f. The ROC curve has one point per distinct distance d of
the kept pairs (accept every pair at distance <= d), and the point (0, 0) (accept nothing).
Reported is the point with the largest FPR not above f and, among the points with that FPR, the one
with the largest TPR: equivalently the largest kept-pair distance t with FPR(t) <= f. Pairs at equal
distances are all accepted or all refused. Where even the smallest distance has FPR > f, the point is
(0, 0) with threshold -inf (nothing accepted). This is the point of scikit-learn's
``roc_curve(same, -distance, drop_intermediate=False)`` at the last index with ``fpr <= f`` (its
threshold is -t), and "FPR <= f" is decided as it computes it: ``false positives / negatives <= f``
in float64. Every threshold in [t, v), v the next negative distance, gives the same decisions on
this data; t is the one reported.

Exact in bounded memory. With m the largest count of false positives allowed at the largest target
(m / negatives <= f), v is the (m + 1)-th smallest negative distance and t the largest kept-pair
distance below v. So the accumulator keeps, while the chunks stream, the m + 1 smallest negative
distances seen so far (a buffer compacted with kthvalue whenever it grows by a quarter; a new negative enters
only if below its bound, the current (m + 1)-th smallest) and the positive distances below that
bound: 4 B x (1.25 (m + 1) + positives) for float32 distances, about 50 MB at MSMT17 scale (9.6e8 pairs,
f = 1e-2) plus its positives (~3e5), and nothing of size queries x gallery. The smaller targets
read the same buffer. The pair counts are known before the first chunk, from the identities alone.

The ROC curve. A histogram of the kept pairs over 2^15 bins of the float32 bit pattern of the
distance clamped at 0 (exponent and 7 mantissa bits: bins 0.8 % of the distance wide; the map is
monotone, so the counts below each bin edge are exact) gives exact ROC points at every bin edge for
float32 distances (for float64 distances the edges are at float32 rounding); the curve returned is
these points thinned to about 200 on a log FPR grid, with the reported points merged in exactly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch

from .rank import JUNK_PID, as_1d_array, check_dist_chunk

DEFAULT_FPRS = (1e-4, 1e-3, 1e-2)

_KEY_BITS = 16  # histogram bins: the top 16 bits of a non-negative float32, less its zero sign bit
_NUM_BINS = 1 << (_KEY_BITS - 1)
_BLOCK_ELEMENTS = 1 << 22  # (rows x gallery) elements per block of a chunk: bounds the temporaries
_CURVE_POINTS = 200


def fpr_label(fpr: float) -> str:
    """1e-4 -> "1e-4", 0.0025 -> "2.5e-3": the FPR as it appears in result keys."""
    mantissa, exponent = f"{float(fpr):e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def tpr_key(fpr: float) -> str:
    return f"TPR@FPR={fpr_label(fpr)}"


def threshold_key(fpr: float) -> str:
    return f"threshold@FPR={fpr_label(fpr)}"


def check_fprs(fprs, name: str = "fprs") -> tuple[float, ...]:
    """The target FPRs as sorted distinct floats, each in (0, 1)."""
    if isinstance(fprs, (str, bytes)) or not isinstance(fprs, Sequence):
        raise TypeError(f"{name} must be a sequence of target false positive rates, got {type(fprs).__name__}")
    out = []
    for value in fprs:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name}: expected numbers in (0, 1), got {value!r}")
        if not 0.0 < float(value) < 1.0:
            raise ValueError(f"{name}: a target false positive rate must be in (0, 1), got {value!r}")
        out.append(float(value))
    return tuple(sorted(set(out)))


def max_false_positives(fpr: float, num_negatives: int) -> int:
    """The largest m with m / num_negatives <= fpr, compared in float64 as roc_curve computes FPRs."""
    m = int(math.floor(fpr * num_negatives))
    while m > 0 and m / num_negatives > fpr:
        m -= 1
    while m + 1 <= num_negatives and (m + 1) / num_negatives <= fpr:
        m += 1
    return m


def pair_counts(q_pids, q_camids, g_pids, g_camids) -> tuple[int, int]:
    """(positive pairs, negative pairs) among the kept (query, gallery) pairs, from the identities alone."""
    q_pids = as_1d_array("q_pids", q_pids)
    q_camids = as_1d_array("q_camids", q_camids, q_pids.shape[0], "q_pids")
    g_pids = as_1d_array("g_pids", g_pids)
    g_camids = as_1d_array("g_camids", g_camids, g_pids.shape[0], "g_pids")
    real = g_pids != JUNK_PID
    g_pids, g_camids = g_pids[real], g_camids[real]
    num_g = g_pids.shape[0]

    def gallery_count(gallery_keys, query_keys):
        # how many gallery rows equal each query row, through one numbering of the rows of both
        _, inverse = np.unique(np.concatenate([gallery_keys, query_keys]), axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        return np.bincount(inverse[:num_g], minlength=int(inverse.max()) + 1)[inverse[num_g:]]

    if q_pids.shape[0] == 0:
        return 0, 0
    same_id = gallery_count(g_pids[:, None], q_pids[:, None])
    same_id_cam = gallery_count(np.stack([g_pids, g_camids], 1), np.stack([q_pids, q_camids], 1))
    positives = int((same_id - same_id_cam).sum())
    negatives = int((num_g - same_id).sum())
    return positives, negatives


def _bins(values: torch.Tensor) -> torch.Tensor:
    """Histogram bin (int32) of each distance: the top bits of its float32 pattern, which order like the
    values for non-negative floats; a negative distance (and -0.0) has a negative pattern and goes to bin
    0, so the map is monotone and the counts below each bin edge are exact."""
    bits = values.to(torch.float32).view(torch.int32)
    return (bits >> (32 - _KEY_BITS)).clamp_min_(0)


@functools.cache
def _bin_upper_thresholds() -> np.ndarray:
    """For each bin, the largest float32 value in it: its ROC point accepts the pairs with d <= that."""
    bits = (np.arange(_NUM_BINS, dtype=np.int64) << (32 - _KEY_BITS)) | ((1 << (32 - _KEY_BITS)) - 1)
    with np.errstate(invalid="ignore"):  # the bins past +inf hold NaN patterns; no distance is there
        return bits.astype(np.int32).view(np.float32).astype(np.float64)


class PairMasks:
    """Which (query, gallery) pairs of a chunk the protocol drops, and which are positive: computed once per
    chunk for every accumulator that shares this object (the rows of one evaluation see the same queries)."""

    def __init__(self, g_pids, g_camids, device=None):
        g_pids = as_1d_array("g_pids", g_pids)
        g_camids = as_1d_array("g_camids", g_camids, g_pids.shape[0], "g_pids")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.g_pids = torch.from_numpy(g_pids).to(self.device)
        self.g_camids = torch.from_numpy(g_camids).to(self.device)
        self.junk = self.g_pids == JUNK_PID
        self._ids = None  # the identities and cameras of the chunk the masks are for
        self._masks = None

    def __call__(self, q_pids: np.ndarray, q_camids: np.ndarray):
        """(drop, positive): (B, num_gallery) bool tensors for these queries' identities and cameras."""
        ids = (q_pids, q_camids)
        if self._ids is None or not all(np.array_equal(a, b) for a, b in zip(self._ids, ids)):
            self._masks = None  # free the last chunk's first
            pids = torch.from_numpy(q_pids).to(self.device)
            same = pids[:, None] == self.g_pids[None, :]
            drop = same & (torch.from_numpy(q_camids).to(self.device)[:, None] == self.g_camids[None, :])
            drop |= self.junk[None, :]
            same &= ~drop
            self._ids, self._masks = (q_pids.copy(), q_camids.copy()), (drop, same)
        return self._masks


class StreamingVerification:
    """TPR at target FPRs (and an ROC curve) over all kept (query, gallery) pairs, chunk by chunk.

    ``StreamingVerification(q_pids, q_camids, g_pids, g_camids, fprs=DEFAULT_FPRS, device=None)``
    takes every query's identity up front (the pair counts fix how many negative distances must be
    kept); ``update(dist_chunk, q_pids, q_camids)`` takes the (B, num_gallery) distances of B queries,
    each query exactly once, in any order; ``compute()`` returns the points (see the module docstring
    for the definition, equal to scikit-learn's ``roc_curve``) and a thinned ROC curve. The buffer of
    negative distances is compacted when it holds more than m + 1 + max((m + 1) / 4, ``min_buffer``).
    Accumulators of the same queries and gallery may share one ``masks=PairMasks(g_pids, g_camids, device)``
    so that each chunk's masks are made once.
    """

    def __init__(
        self,
        q_pids,
        q_camids,
        g_pids,
        g_camids,
        fprs: Sequence[float] = DEFAULT_FPRS,
        device=None,
        min_buffer: int = 1 << 20,
        masks: PairMasks | None = None,
    ):
        self.fprs = check_fprs(fprs)
        if not self.fprs:
            raise ValueError("fprs: give at least one target false positive rate")
        self.num_positive, self.num_negative = pair_counts(q_pids, q_camids, g_pids, g_camids)
        if not isinstance(min_buffer, (int, np.integer)) or isinstance(min_buffer, bool) or min_buffer < 0:
            raise ValueError(f"min_buffer must be a non-negative integer, got {min_buffer!r}")
        self.min_buffer = int(min_buffer)
        self.masks = PairMasks(g_pids, g_camids, device) if masks is None else masks
        if not np.array_equal(self.masks.g_pids.cpu().numpy(), as_1d_array("g_pids", g_pids)):
            raise ValueError("masks: a PairMasks of another gallery")
        self.device = self.masks.device
        self.allowed = [max_false_positives(f, self.num_negative) for f in self.fprs]
        # The m + 1 smallest negatives of the largest target (m < negatives, since every f < 1).
        self.capacity = min(max(self.allowed) + 1, self.num_negative)
        self._negatives: list[torch.Tensor] = []
        self._negatives_size = 0
        self._positives: list[torch.Tensor] = []
        self._bound = math.inf  # a negative at or above it can no longer be among the capacity smallest
        self._bound_bin = _NUM_BINS - 1  # the bin of the bound: negatives in later bins are above it
        self._slack = max(self.capacity // 4, self.min_buffer)
        self._limit = self.capacity + self._slack  # compact when the buffer holds more
        # negatives' bins, then positives' (+ _NUM_BINS), then one for the dropped pairs
        self._hist = torch.zeros(2 * _NUM_BINS + 1, dtype=torch.int64, device=self.device)

    @property
    def num_gallery(self) -> int:
        return self.masks.g_pids.shape[0]

    def update(self, dist_chunk: torch.Tensor, q_pids, q_camids) -> None:
        b = check_dist_chunk(dist_chunk, self.num_gallery)
        drop, positive = self.masks(
            as_1d_array("q_pids", q_pids, b, "dist_chunk's rows"),
            as_1d_array("q_camids", q_camids, b, "dist_chunk's rows"),
        )
        dist_chunk = dist_chunk.detach().to(self.device)
        rows = max(1, _BLOCK_ELEMENTS // max(1, self.num_gallery))
        for start in range(0, b, rows):
            stop = min(start + rows, b)
            self._update_block(dist_chunk[start:stop], drop[start:stop], positive[start:stop])

    def _update_block(self, dist, drop, positive):
        # bin codes: negatives 0 .. _NUM_BINS - 1, positives + _NUM_BINS, dropped pairs the last bin
        codes = _bins(dist).add_(positive, alpha=_NUM_BINS).masked_fill_(drop, 2 * _NUM_BINS)
        flat = codes.view(-1)
        if flat.numel() < (1 << 16):  # bincount's fixed cost (its 1 MB output) dwarfs a small block
            self._hist.index_put_((flat.long(),), torch.ones_like(flat, dtype=torch.int64), accumulate=True)
        else:
            self._hist += torch.bincount(flat, minlength=2 * _NUM_BINS + 1)
        if self._bound_bin > 0:
            # Once `capacity` negatives lie in bins <= b, every negative in a later bin is larger than all of
            # them (equal values share a bin), so none of those can be among the capacity smallest: the
            # histogram tightens the candidates' bin after every block, between compactions.
            reached = torch.searchsorted(torch.cumsum(self._hist[:_NUM_BINS], 0), self.capacity)
            self._bound_bin = min(self._bound_bin, int(reached))
        # Candidates by bin first (one int32 comparison; only kept negatives have codes below _NUM_BINS),
        # then exactly. NaN is below no bound, so a NaN distance is never accepted.
        fresh = dist[codes <= self._bound_bin]
        fresh = fresh[fresh < self._bound]
        del codes, flat
        positives = dist[positive]
        self._positives.append(positives[positives < self._bound])
        self._negatives.append(fresh)
        self._negatives_size += fresh.numel()
        if self._negatives_size > self._limit:
            self._compact()

    def _compact(self):
        """Keep every negative not above the capacity-th smallest (so the capacity smallest, as a multiset,
        are all there), and the positives below the new bound."""
        negatives = torch.cat(self._negatives)
        self._negatives = []
        if negatives.numel() > self.capacity:
            kth = torch.kthvalue(negatives, self.capacity).values
            # Ties with kth are kept (they never exceed what this compaction held): the (m + 1)-th
            # smallest of what is kept is still the (m + 1)-th smallest of all negatives seen.
            negatives = negatives[negatives <= kth]
            self._bound = float(kth.item())
            self._bound_bin = min(self._bound_bin, int(_bins(kth.reshape(1)).item()))
        self._negatives, self._negatives_size = [negatives], negatives.numel()
        # Ties kept beyond the capacity must not make every later block compact again.
        self._limit = max(self.capacity, self._negatives_size) + self._slack
        positives = torch.cat(self._positives)
        self._positives = [positives[positives < self._bound]]

    def compute(self) -> dict:
        """{"num_positive_pairs", "num_negative_pairs", "points": [{"target_fpr", "fpr", "tpr",
        "threshold"}] (one per target, ascending), "roc": {"fpr", "tpr", "threshold": float64 arrays}}.
        With no positive or no negative pair the rates are undefined: NaN, and an empty curve."""
        counts = self._hist[: 2 * _NUM_BINS].view(2, _NUM_BINS).sum(1).tolist()
        seen_negative, seen_positive = (int(v) for v in counts)
        if (seen_negative, seen_positive) != (self.num_negative, self.num_positive):
            raise ValueError(
                f"StreamingVerification was fed {seen_positive} positive and {seen_negative} negative pairs, "
                f"but the identities give {self.num_positive} and {self.num_negative}: update() must see "
                f"every query exactly once"
            )
        out = {"num_positive_pairs": self.num_positive, "num_negative_pairs": self.num_negative}
        if self.num_positive == 0 or self.num_negative == 0:
            nan = float("nan")
            out["points"] = [{"target_fpr": f, "fpr": nan, "tpr": nan, "threshold": nan} for f in self.fprs]
            out["roc"] = {key: np.zeros(0) for key in ("fpr", "tpr", "threshold")}
            return out
        self._compact()
        negatives, positives = self._negatives[0], self._positives[0]
        points = []
        for fpr, m in zip(self.fprs, self.allowed):
            # v: the (m + 1)-th smallest negative; accepting anything at v or above exceeds the target.
            v = torch.kthvalue(negatives, m + 1).values
            neg_below = negatives[negatives < v]
            pos_below = positives[positives < v]
            below = torch.cat([neg_below, pos_below])
            threshold = float(below.max().item()) if below.numel() else -math.inf
            points.append(
                {
                    "target_fpr": fpr,
                    "fpr": neg_below.numel() / self.num_negative,
                    "tpr": pos_below.numel() / self.num_positive,
                    "threshold": threshold,
                }
            )
        out["points"] = points
        out["roc"] = self._curve(points)
        return out

    def _curve(self, points) -> dict:
        """The histogram's ROC points (exact, at bin edges) thinned to a log FPR grid, with ``points``."""
        hist = self._hist[: 2 * _NUM_BINS].cpu().numpy().reshape(2, _NUM_BINS)
        fps = np.cumsum(hist[0])
        tps = np.cumsum(hist[1])
        used = np.flatnonzero(hist.sum(0))
        fpr = fps[used] / self.num_negative
        tpr = tps[used] / self.num_positive
        threshold = _bin_upper_thresholds()[used]
        # Keep the last histogram point at or below each grid FPR (the best TPR there).
        grid = np.geomspace(min(1.0, 1.0 / self.num_negative), 1.0, _CURVE_POINTS)
        picks = np.searchsorted(fpr, grid, side="right") - 1
        picks = np.unique(picks[picks >= 0])
        # (fpr, tpr, exact first, threshold): a point on both keeps the exact threshold of the reported one.
        curve = [(0.0, 0.0, 0, -math.inf)] + [(p["fpr"], p["tpr"], 0, p["threshold"]) for p in points]
        curve += list(zip(fpr[picks], tpr[picks], [1] * picks.shape[0], threshold[picks]))
        curve.sort(key=lambda point: point[:3])
        fpr, tpr, _, threshold = (np.array(column, dtype=np.float64) for column in zip(*curve))
        first = np.ones(fpr.shape[0], dtype=bool)
        first[1:] = (np.diff(fpr) != 0) | (np.diff(tpr) != 0)
        return {"fpr": fpr[first], "tpr": tpr[first], "threshold": threshold[first]}


def verification_row(result: dict) -> dict:
    """The flat keys a results row gets from ``StreamingVerification.compute()``: "TPR@FPR=1e-4",
    "threshold@FPR=1e-4", ... (fractions and distances), and "verification": the whole result."""
    row = {}
    for point in result["points"]:
        row[tpr_key(point["target_fpr"])] = point["tpr"]
        row[threshold_key(point["target_fpr"])] = point["threshold"]
    row["verification"] = result
    return row
