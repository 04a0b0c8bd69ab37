"""Per-query records of the streaming evaluation: each query's AP, first-match rank and top k.

The evaluation report (scstn_vcn.report) shows every query, so it needs what the metrics average:
each query's AP and INP, the rank of its first match, and the first k gallery items of its sorted row
with their protocol code (match, non-match, or discarded: junk or same identity seen by the same
camera). ``StreamingRankEvaluator(..., record_topk=k)`` hands this recorder the very sorted rows and
per-query terms it sums into CMC / mAP / mINP, so the records agree with the printed table by
construction: mAP is the mean of the recorded AP over valid queries, rank-n the fraction of valid
queries whose first match is at rank <= n.

Memory: O(num_query * k), never a (query x gallery) matrix; only each chunk's first k columns of the
sorted order are copied out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# The codes of StreamingRankEvaluator, per sorted gallery position: discarded (junk, or same identity
# and camera as the query), a kept non-match, a kept match.
CODE_DISCARDED, CODE_NEGATIVE, CODE_POSITIVE = 0, 1, 2


def check_topk(topk) -> int:
    if not isinstance(topk, (int, np.integer)) or isinstance(topk, bool) or topk < 1:
        raise ValueError(f"record_topk must be a positive integer (gallery items kept per query), got {topk!r}")
    return int(topk)


@dataclass
class PerQueryRecords:
    """One evaluation row's per-query results, in query order (Q queries, k = min(topk, gallery)).

    top          (Q, k) int64   gallery indices of the first k sorted positions (discarded ones included)
    code         (Q, k) uint8   CODE_DISCARDED / CODE_NEGATIVE / CODE_POSITIVE of each
    dist         (Q, k) float32 their distances (the row's: cosine, fused, re-ranked ...)
    first_index  (Q,)   int64   gallery index of the first match, -1 for a query without a valid match
    first_rank   (Q,)   int64   its 1-based rank among the kept items (what CMC counts), 0 if none
    ap, inp      (Q,)   float64 the query's AP and INP, NaN if it has no valid match
    num_matches  (Q,)   int64   kept matches in the gallery
    """

    top: np.ndarray
    code: np.ndarray
    dist: np.ndarray
    first_index: np.ndarray
    first_rank: np.ndarray
    ap: np.ndarray
    inp: np.ndarray
    num_matches: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return self.num_matches > 0

    def kept_ranks(self) -> np.ndarray:
        """(Q, k) 1-based rank among kept items of each top-k position, 0 for a discarded one (the
        top k is a prefix of the sorted row, so counting within it gives the row's ranks)."""
        kept = self.code != CODE_DISCARDED
        return np.where(kept, np.cumsum(kept, axis=1), 0)


class PerQueryRecorder:
    """Collects PerQueryRecords chunk by chunk; called by StreamingRankEvaluator.update."""

    def __init__(self, topk: int):
        self.topk = check_topk(topk)
        self._sorted = []  # per chunk: (top, code, dist, first_index)
        self._metrics = []  # per chunk: (first_rank, ap, inp, num_matches)

    def add_sorted(self, dist_rows: torch.Tensor, order: torch.Tensor, code: torch.Tensor) -> None:
        """A chunk's (B, G) distances, the stable sort's order and the codes gathered in that order."""
        k = min(self.topk, order.shape[1])
        top = order[:, :k]
        positive = code == CODE_POSITIVE
        # argmax gives the first maximal position: the first match's sorted position (0 when none).
        position = positive.to(torch.uint8).argmax(dim=1, keepdim=True)
        first_index = torch.where(positive.any(dim=1), order.gather(1, position)[:, 0], -1)
        # Copies, not views: a view of the first k columns would keep the chunk's whole (B, G) order and
        # codes alive until compute().
        self._sorted.append(
            (
                top.clone().to("cpu", torch.int64),
                code[:, :k].clone().cpu(),
                dist_rows.gather(1, top).float().cpu(),
                first_index.cpu().to(torch.int64),
            )
        )

    def add_metrics(self, valid: torch.Tensor, ap: torch.Tensor, inp: torch.Tensor, first_rank, num_matches) -> None:
        """The chunk's per-query terms as the evaluator sums them: ``valid`` (B,) bool, and for the valid
        queries only, ``ap`` and ``inp`` (float64) and ``first_rank``; ``num_matches`` (B,) for all."""
        valid = valid.cpu()
        b = valid.shape[0]
        full_ap = torch.full((b,), float("nan"), dtype=torch.float64)
        full_inp = full_ap.clone()
        full_rank = torch.zeros(b, dtype=torch.int64)
        full_ap[valid] = ap.cpu().to(torch.float64)
        full_inp[valid] = inp.cpu().to(torch.float64)
        full_rank[valid] = first_rank.cpu().to(torch.int64)
        self._metrics.append((full_rank, full_ap, full_inp, num_matches.cpu().to(torch.int64)))

    def compute(self) -> PerQueryRecords:
        if len(self._sorted) != len(self._metrics):
            raise RuntimeError("PerQueryRecorder: add_sorted and add_metrics must be called once per chunk each")
        if not self._sorted:
            raise ValueError("PerQueryRecorder: no chunk was recorded")
        top, code, dist, first_index = (torch.cat(parts).numpy() for parts in zip(*self._sorted))
        first_rank, ap, inp, num_matches = (torch.cat(parts).numpy() for parts in zip(*self._metrics))
        return PerQueryRecords(top, code, dist, first_index, first_rank, ap, inp, num_matches)
