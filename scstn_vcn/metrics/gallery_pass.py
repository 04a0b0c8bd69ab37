"""Plain CMC / mAP / mINP in one pass over the gallery, without sorting a row ("gallery pass").

``StreamingRankEvaluator`` computes each query chunk's distances to the whole gallery and sorts every
row: with a gallery of millions memory-mapped from disk that reads the gallery once per query chunk
and sorts g values per query. The metrics only need the rank of each positive, and a positive's rank
is a count:

    r_p = 1 + #{kept gallery items i : (d_i, i) < (d_p, p)}            (ties by gallery index)

so this module reads the gallery once, in blocks of ``block_rows`` rows, and counts. Protocol as in
``scstn_vcn.metrics.rank``: for query q, items of pid -1 (junk) and items with q's pid and q's camera are
dropped; positives P_q are the items of q's pid from other cameras, negatives N_q the other kept items.

1. Positives up front. The gallery indices of P_q come from the pids alone (the gallery grouped by pid
   once). Their features are gathered and the distances are ESTIMATED in float64 (rows normalised in
   float64): e_p for p in P_q, per view (a fusion view sums its branches' estimates). Let
   e_(0) <= ... <= e_(n-1) be q's estimates sorted, s_p the position of p in that order.

2. One pass over the gallery blocks; within a block the query chunks. Each (chunk, block) distance
   matrix comes from ``cosine_distance_rows`` as in the streaming path (a fusion view sums the branches'
   float32 matrices in the features' order), and these PASS values d are the ones ranked:
   - each positive's pass value v_p (and index i_p) is recorded;
   - a negative can precede a positive only if d <= max_p e_p + delta (below); those are selected and
     given their bucket b = #{k : e_(k) < d} (``torch.searchsorted`` on the chunk's sorted estimates,
     padded with +inf, one flat search for the whole tile; a bucket that search gets wrong can only be
     one next to an estimate within delta, so the test that follows catches it). If e_(b-1) >= d - delta
     or e_(b) <= d + delta (exact, float64) the negative is a NEAR TIE and is kept explicitly as
     (query, d, index); otherwise it is only counted: counts[q, b] += 1.

   delta bounds |v_p - e_p|, checked for every positive after the pass (step 3). Then a counted
   negative of bucket b precedes exactly the positives with s_p >= b:
     s_p >= b:  v_p >= e_p - delta >= e_(b) - delta > d        (the negative comes first)
     s_p <  b:  v_p <= e_p + delta <= e_(b-1) + delta < d      (the positive comes first)
   with strict inequalities, so the gallery index never decides. The same bound shows that an
   unselected negative (d > max e + delta) follows every positive.

3. After the pass, for a query all of whose positives satisfy |v_p - e_p| <= delta:

       r_p = 1 + #{p' in P_q : (v_p', i_p') < (v_p, i_p)}
               + sum_{b <= s_p} counts[q, b]
               + #{near ties (d, i) of q : (d, i) < (v_p, i_p)}

   exactly the rank a stable sort of the pass's own row gives. Then, with the positives in rank order
   r_1 < ... < r_n: AP = (1/n) sum_j j / r_j, INP = n / r_n, CMC from r_1; queries without positives
   are not valid. A query with a positive outside the bound (in practice never: non-finite features,
   TF32 products) is evaluated again by ``StreamingRankEvaluator`` on its full rows, computed blockwise
   from the same blocks; correctness never rests on delta, only the speed.

delta: a float32 distance 1 - <q/|q|, g> / |g| is a D-term product of unit-scaled vectors; its rounding
error is about sqrt(D) * 2^-24 in practice (2.7e-6 at D = 2,048; the worst case D * 2^-24 is not reached
by blocked, FMA-accumulated sums of non-adversarial data) plus a few ulps of 1 for the norms and 1 - s.
``DELTA_PER_BRANCH`` = 2e-5 is about 7 times that; a fused view (one float32 sum of k branches) gets
k * delta. Float64 features get the same bound scaled by eps64 / eps32. A larger delta only stores more
near ties; a smaller one only sends more queries to the fallback. On the GPU float16 / bfloat16 galleries
are multiplied as their float32 upcast here (their half-precision product is ~1e-3 off, which would make
most negatives near ties): its ranks are then those of the float32 distances, as on the CPU.

Work and memory. Time: the same multiply-adds as the streaming path, plus O(chunk x block) comparisons
per block instead of a sort of every row; the gallery is read once. Memory: a block's distance matrix and
masks, 4 + 2 B per (query, gallery) element of the chunk x block_rows tile (24 MiB at 128 x 32,768;
4 B more for a fused view's sum), and while the tile is processed about 100 B per selected negative
(one closer than its query's farthest positive: the tile's share of the negatives ranked before a
positive, small for a good model, at most the whole tile); 40 B per (query, positive slot) for the
sorted estimates and bucket counts (q x P_max, P_max = most positives of a query); O(T) for the T
positives; 24 B per near tie (a few per positive for features like a network's, whose distances spread
over ~0.1 or more); a few 256 x D float64 buffers while the estimates are computed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .distance import EPS, compute_dtype, cosine_distance_rows, inverse_norms
from .rank import JUNK_PID, no_valid_query_error

# Galleries of at least this many items are evaluated by the gallery pass when nothing needs sorted rows
# (evaluate_features' gallery_pass=None): below it the streaming path's sort is cheap and a gallery of
# ~100k float32 2,048-d rows (0.8 GB) stays in the page cache between query chunks anyway.
GALLERY_PASS_MIN_ITEMS = 200_000

# Gallery rows per block: 32,768 x 2,048 float32 is 256 MiB of (memory-mapped) pages per branch.
DEFAULT_BLOCK_ROWS = 32_768

# Bound on |float32 pass distance - float64 estimate| per branch (module docstring).
DELTA_PER_BRANCH = 2e-5

# Pairs (query, positive) whose estimates are computed at once: a few 256 x D x 8 B float64 buffers.
_ESTIMATE_PAIRS = 256


def _delta(dtype: torch.dtype, branches: int, per_branch: float) -> float:
    scale = 1.0 if dtype != torch.float64 else torch.finfo(torch.float64).eps / torch.finfo(torch.float32).eps
    return per_branch * scale * branches


def use_gallery_pass(gallery_pass, num_gallery: int, **needs_sorted_rows) -> bool:
    """Whether evaluate_features takes the gallery pass: ``gallery_pass`` True / False, or None for
    galleries of at least GALLERY_PASS_MIN_ITEMS items. ``needs_sorted_rows`` are the options that need
    sorted rows (query_expansion, record_topk, fprs): with any of them set (not None, not empty)
    None means no, and True is a ValueError naming them."""
    if gallery_pass not in (None, True, False):
        raise TypeError(f"gallery_pass must be True, False or None, got {gallery_pass!r}")
    conflicts = [name for name, value in needs_sorted_rows.items() if value is not None and not _empty(value)]
    if gallery_pass and conflicts:
        raise ValueError(
            f"gallery_pass=True cannot be combined with {', '.join(conflicts)}: "
            f"{'it needs' if len(conflicts) == 1 else 'they need'} sorted distance rows "
            "(set them to None, or gallery_pass=False)"
        )
    if gallery_pass is None:
        return not conflicts and num_gallery >= GALLERY_PASS_MIN_ITEMS
    return gallery_pass


def _empty(value) -> bool:
    return hasattr(value, "__len__") and len(value) == 0  # fprs=() is off


def positive_pairs(q_pids: np.ndarray, q_camids: np.ndarray, g_pids: np.ndarray, g_camids: np.ndarray):
    """Every (query, positive) pair as two int64 arrays (query index, gallery index), sorted by query
    then gallery index: same pid (not junk), other camera. The gallery is grouped by pid once."""
    order = np.argsort(g_pids, kind="stable")
    sorted_pids = g_pids[order]
    lo = np.searchsorted(sorted_pids, q_pids, side="left")
    lens = np.where(q_pids == JUNK_PID, 0, np.searchsorted(sorted_pids, q_pids, side="right") - lo)
    qi = np.repeat(np.arange(q_pids.shape[0], dtype=np.int64), lens)
    within = np.arange(qi.shape[0], dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    gi = order[np.repeat(lo, lens) + within].astype(np.int64)
    keep = g_camids[gi] != q_camids[qi]
    return qi[keep], gi[keep]


def _normalised64(x: torch.Tensor, device) -> torch.Tensor:
    x = x.to(device=device, dtype=torch.float64)
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(EPS)


def _estimates(query: torch.Tensor, gallery: torch.Tensor, qi: np.ndarray, gi: np.ndarray, device) -> torch.Tensor:
    """float64 cosine distances of the pairs (qi, gi); only the pairs' gallery rows are read, each once
    per piece and in ascending order over the whole gallery (a memory-mapped file is swept once)."""
    out = torch.empty(qi.shape[0], dtype=torch.float64, device=device)
    by_gallery = np.argsort(gi, kind="stable")
    for start in range(0, qi.shape[0], _ESTIMATE_PAIRS):
        pairs = by_gallery[start : start + _ESTIMATE_PAIRS]
        unique_g, inverse = np.unique(gi[pairs], return_inverse=True)
        g_hat = _normalised64(gallery[torch.from_numpy(unique_g).to(gallery.device)], device)
        q_hat = _normalised64(query[torch.from_numpy(qi[pairs]).to(query.device)], device)
        dist = 1.0 - (q_hat * g_hat[torch.from_numpy(inverse).to(device)]).sum(1)
        out[torch.from_numpy(pairs).to(device)] = dist
    return out


class _ViewPass:
    """One view's (a feature's or the fusion's) state during the pass: sorted estimates, bucket counts
    of the counted negatives, the near ties, and the positives' pass values."""

    def __init__(self, estimates, qi, slot, num_q: int, delta: float, branches: int):
        device = estimates.device
        width = int(slot.max().item()) + 2 if slot.numel() else 1  # P_max + 1: bucket P_max, then +inf
        self.delta = delta
        self.estimates = estimates
        padded = torch.full((num_q, width), math.inf, dtype=torch.float64, device=device)
        padded[qi, slot] = estimates
        self.sorted, order = torch.sort(padded, dim=1)  # NaN estimates sort last
        rank_of = torch.empty_like(order)
        rank_of.scatter_(1, order, torch.arange(width, device=device).expand(num_q, width).contiguous())
        self.sorted_pos = rank_of[qi, slot]  # s_p: each positive's position among its query's estimates
        # Only negatives up to the largest estimate + delta can precede a positive (-inf: no positives;
        # a NaN estimate makes the threshold NaN: nothing selected, and the check sends the query back).
        largest = torch.where(torch.isinf(padded), -math.inf, padded).amax(1)
        self.threshold = largest + delta
        # ... compared with float32 distances as float32, rounded up (a superset: the extra ones land in
        # bucket P_max, after every positive).
        up = self.threshold.to(torch.float32)
        self.threshold32 = torch.where(up < self.threshold, torch.nextafter(up, up.new_tensor(math.inf)), up)
        # The sorted estimates flattened for ONE torch.searchsorted over a chunk's selected values: row q's
        # entries become q * span + 1 + e (distances of a view lie in [0, 2 * branches]; +inf padding and
        # NaN become the row's end, q * span + span - 1), so the flat array is sorted and a value of row q
        # lands among row q's entries. Float64 keys resolve ~1e-9 at q * span ~ 1e7: an off-by-one bucket
        # only for values that close to an estimate, which the exact check below turns into near ties.
        self.span = 2.0 * branches + 4.0
        base = torch.arange(num_q, dtype=torch.float64, device=device)[:, None] * self.span
        inside = self.sorted.clamp(-1.0, self.span - 2.0).nan_to_num(self.span - 2.0) + 1.0
        self.keys = (base + inside).view(-1)
        self.sorted = self.sorted.view(-1)  # read back at q * width + bucket
        # counts[q * width + b]; one more slot collects the near ties' increments (never read).
        self.counts = torch.zeros(num_q * width + 1, dtype=torch.int64, device=device)
        self.width = width
        self.values = torch.full_like(estimates, math.nan)  # v_p; NaN until the positive's block is read
        self.near: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update(self, dist, q0, g0, pairs, candidates):
        """Takes the (chunk, block) distances of queries q0.. against gallery items g0..; ``pairs`` are the
        positives inside it (flat index, row, column), ``candidates`` the tile's kept negatives (bool)."""
        pair_idx, pair_rows, pair_cols = pairs
        self.values[pair_idx] = dist[pair_rows, pair_cols].to(torch.float64)
        b, tile_cols = dist.shape[0], dist.shape[1]
        threshold = self.threshold32 if dist.dtype == torch.float32 else self.threshold
        select = torch.le(dist, threshold[q0 : q0 + b, None]).logical_and_(candidates)
        flat = select.view(-1).nonzero().squeeze(1)  # row-major positions in the tile
        del select
        if flat.numel() == 0:
            return
        values = dist.view(-1)[flat].to(torch.float64)
        q = torch.div(flat, tile_cols, rounding_mode="floor") + q0
        keys = self.keys[q0 * self.width : (q0 + b) * self.width]
        wanted = q * self.span + (values.clamp(-1.0, self.span - 2.0) + 1.0)
        at = torch.searchsorted(keys, wanted) + q0 * self.width  # q * width + bucket
        bucket = at - q * self.width
        # The exact test (float64, the true estimates): not near either neighbouring estimate = counted.
        below = torch.where(bucket > 0, self.sorted[(at - 1).clamp_min(0)], -math.inf)
        above = self.sorted[at.clamp_max(self.sorted.shape[0] - 1)]
        near = (values - below <= self.delta) | (above - values <= self.delta)
        dump = self.counts.shape[0] - 1
        self.counts.index_add_(0, torch.where(near, dump, at), torch.ones_like(at))
        if near.any():
            self.near.append((q[near], values[near], flat[near] % tile_cols + g0))

    def ranks(self, qi: torch.Tensor, gi: torch.Tensor, good: torch.Tensor):
        """(query, j, rank) of every positive of the ``good`` queries, j its 1-based place among the
        query's positives in rank order (step 3 of the module docstring)."""
        device = qi.device
        mine = good[qi]
        if self.near:
            nq, nv, ni = (torch.cat(parts) for parts in zip(*self.near))
            keep = good[nq]
            nq, nv, ni = nq[keep], nv[keep], ni[keep]
        else:
            nq = ni = torch.empty(0, dtype=torch.int64, device=device)
            nv = torch.empty(0, dtype=torch.float64, device=device)
        pos_idx = torch.nonzero(mine).squeeze(1)
        query = torch.cat([qi[pos_idx], nq])
        value = torch.cat([self.values[pos_idx], nv])
        index = torch.cat([gi[pos_idx], ni])
        which = torch.cat([pos_idx, torch.full_like(nq, -1)])  # flat positive index, -1 for a near tie
        # Lexicographic (query, value, gallery index) by stable sorts from the last key to the first.
        order = torch.sort(index, stable=True).indices
        order = order[torch.sort(value[order], stable=True).indices]
        order = order[torch.sort(query[order], stable=True).indices]
        query, which = query[order], which[order]
        is_pos = which >= 0
        num_q = good.shape[0]
        # Inclusive running counts of positives / near ties, minus those of the earlier queries.
        pos_seen = torch.cumsum(is_pos, 0)
        tie_seen = torch.cumsum(~is_pos, 0)
        pos_before = torch.cumsum(torch.bincount(query[is_pos], minlength=num_q), 0)
        tie_before = torch.cumsum(torch.bincount(query[~is_pos], minlength=num_q), 0)
        pos_before = torch.cat([pos_before.new_zeros(1), pos_before[:-1]])
        tie_before = torch.cat([tie_before.new_zeros(1), tie_before[:-1]])
        query, t = query[is_pos], which[is_pos]
        j = pos_seen[is_pos] - pos_before[query]
        ties = tie_seen[is_pos] - tie_before[query]
        counted = torch.cumsum(self.counts[:-1].view(num_q, self.width), 1)[query, self.sorted_pos[t]]
        return query, j, j + counted + ties


class _RerankedView:
    """A view's k-reciprocal re-ranked distances, tile by tile (scstn_vcn.metrics.rerank):

        R[q, j] = D[q, j]^2 / max_q * lambda + (1 - lambda) (1 - m / (2 - m)),   m = m[q, j]

    For the (few) pairs that share a column of V_qe, m comes from ``KReciprocalEncoding.jaccard_pairs``;
    every other pair has m = 0, whose Jaccard term is exactly 1 - lambda. Each element is computed by the
    same float operations, in the same order, as ``KReciprocalEncoding.distances`` computes it for a
    query chunk, so a tile holds the values the streaming path ranks (for the same D). The pairs are kept
    for all queries, ordered by (gallery block, query) so that a tile's pairs are one contiguous run."""

    def __init__(self, encoding, num_q: int, num_g: int, block_rows: int, chunk_size: int, device):
        rows, cols, terms = [], [], []
        for q0 in range(0, num_q, chunk_size):
            row, col, m = encoding.jaccard_pairs(q0, min(q0 + chunk_size, num_q))
            rows.append(row + q0)
            cols.append(col)
            terms.append(encoding.jaccard_term(m))
        row, col, term = torch.cat(rows), torch.cat(cols), torch.cat(terms)
        self.encoding = encoding
        self.lam = float(encoding.config.lambda_value)
        self.den = encoding.denominator[:num_q]
        self.zero_term = encoding.jaccard_term(torch.zeros(1, dtype=term.dtype, device=device))
        self.num_q, self.num_g, self.block_rows = num_q, num_g, block_rows
        self.pair_keys, self.pair_terms = row * num_g + col, term  # sorted by (query, item): lookups
        tile_keys = torch.div(col, block_rows, rounding_mode="floor") * num_q + row
        order = torch.sort(tile_keys, stable=True).indices
        self.tile_keys, self.row, self.col, self.term = tile_keys[order], row[order], col[order], term[order]

    def estimates(self, estimates: torch.Tensor, qi: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
        """float64 re-ranked distances of the positive pairs (qi, gi) from their float64 estimates of D."""
        keys = qi * self.num_g + gi
        at = torch.searchsorted(self.pair_keys, keys).clamp_max(max(self.pair_keys.shape[0] - 1, 0))
        term = torch.full_like(estimates, float(self.zero_term[0]))
        if self.pair_keys.numel():
            found = self.pair_keys[at] == keys
            term[found] = self.pair_terms[at[found]].to(torch.float64)
        return estimates * estimates / self.den[qi].to(torch.float64) * self.lam + term

    def delta(self, estimates: torch.Tensor, qi: torch.Tensor, delta: float) -> float:
        """A bound on |R (float, from the pass's D) - its float64 estimate| over the positives, from
        |D - estimate| <= delta: lambda |D^2 - e^2| / max <= lambda delta (2 |e| + delta) / max, plus the
        rounding of the few float operations of R (values of at most about 1)."""
        if not estimates.numel():
            return delta
        spread = self.lam * delta * (2 * estimates.abs() + delta) / self.den[qi].to(torch.float64)
        eps = torch.finfo(self.den.dtype).eps
        return float(spread.nan_to_num(math.inf).max()) + 16 * eps

    def tile(self, dist: torch.Tensor, q0: int, g0: int) -> torch.Tensor:
        """R of queries q0.. (dist's rows) against gallery items g0.. (dist's columns)."""
        b = dist.shape[0]
        dist = dist.to(self.den.dtype)
        sq = torch.mul(dist, dist).div_(self.den[q0 : q0 + b, None]).mul_(self.lam)
        out = torch.add(sq, self.zero_term)
        first = (g0 // self.block_rows) * self.num_q
        lo, hi = torch.searchsorted(self.tile_keys, torch.tensor([first + q0, first + q0 + b], device=dist.device))
        if hi > lo:
            r, c = self.row[lo:hi] - q0, self.col[lo:hi] - g0
            out[r, c] = sq[r, c] + self.term[lo:hi]
        return out

    def rows(self, dist_rows: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """R of whole rows (the fallback): the encoding's own chunk computation, a query at a time."""
        return torch.cat(
            [self.encoding.distances(int(r), int(r) + 1, dist_rows[i : i + 1]) for i, r in enumerate(rows)]
        )


def _rows_of(query, gallery, q_inv, branches, rows, block_rows, device, upcast):
    """Full distance rows of the queries ``rows`` for one view (its branches summed), block by block
    exactly as the pass computes them."""
    first = gallery[branches[0]]
    num_g = first.shape[0]
    dtype = compute_dtype(torch.promote_types(query[branches[0]].dtype, first.dtype))
    out = torch.empty(rows.shape[0], num_g, dtype=dtype, device=device)
    for g0 in range(0, num_g, block_rows):
        block = out[:, g0 : g0 + block_rows]
        for k, n in enumerate(branches):
            g = gallery[n][g0 : g0 + block_rows].to(device)
            dist = cosine_distance_rows(query[n][rows], g, q_inv[n][rows], inverse_norms(g), upcast=upcast)
            block.copy_(dist) if k == 0 else block.add_(dist)
    return out


@torch.no_grad()
def evaluate_gallery_pass(
    query,
    gallery,
    names,
    fusion,
    ids,
    *,
    device,
    cmc_len: int,
    chunk_size: int,
    evaluator_type,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    encodings=None,
    _delta_per_branch: float | None = None,
) -> dict[str, dict]:
    """{view: result} for every feature in ``names`` and, when ``fusion`` (a tuple of names in the
    features' order) is not empty, "fusion": the dict ``StreamingRankEvaluator.compute()`` returns
    ("cmc" of length ``cmc_len``, "mAP", "mINP", "num_valid_queries"), with the same ranks.

    ``query`` / ``gallery`` map names to (N, D) tensors (the gallery may wrap a memory map: only
    ``gallery[n][start:stop]`` is read per block); ``ids`` is (q_pids, g_pids, q_camids, g_camids) as
    int64 numpy arrays. Per-query sums are folded in query chunks of ``chunk_size``, the streaming
    path's order. ``evaluator_type`` is ``StreamingRankEvaluator`` (handed in by
    scstn_vcn.metrics.streaming, which imports this module): it holds the sums and evaluates the
    fallback queries. ``encodings`` ({view: KReciprocalEncoding}, scstn_vcn.metrics.rerank) adds a row
    view + "+rk" ranked by the view's re-ranked distances (``_RerankedView``), in the same pass.
    ``_delta_per_branch`` overrides ``DELTA_PER_BRANCH`` (tests force the fallback)."""
    q_pids, g_pids, q_camids, g_camids = ids
    if not isinstance(block_rows, (int, np.integer)) or isinstance(block_rows, bool) or block_rows < 1:
        raise ValueError(f"block_rows must be a positive integer, got {block_rows!r}")
    device = torch.device(device)
    chunk_size, block_rows = int(chunk_size), int(block_rows)
    num_q, num_g = q_pids.shape[0], g_pids.shape[0]
    views = {n: (n,) for n in names}
    if fusion:
        views["fusion"] = tuple(fusion)

    qi_np, gi_np = positive_pairs(q_pids, q_camids, g_pids, g_camids)
    if qi_np.shape[0] == 0:
        raise no_valid_query_error()
    qi, gi = torch.from_numpy(qi_np).to(device), torch.from_numpy(gi_np).to(device)
    num_pos = torch.bincount(qi, minlength=num_q)
    slot = torch.arange(qi.shape[0], device=device) - (torch.cumsum(num_pos, 0) - num_pos)[qi]

    query = {n: query[n].to(device) for n in names}
    q_inv = {n: inverse_norms(q) for n, q in query.items()}
    dtype = compute_dtype(torch.promote_types(query[names[0]].dtype, gallery[names[0]].dtype))
    # Half-precision galleries on the GPU: the float32 product (module docstring, delta).
    upcast = device.type != "cpu"
    estimates = {n: _estimates(query[n], gallery[n], qi_np, gi_np, device) for n in names}
    if fusion:
        estimates["fusion"] = sum(estimates[n] for n in fusion)
    per_branch = DELTA_PER_BRANCH if _delta_per_branch is None else float(_delta_per_branch)
    deltas = {v: _delta(dtype, len(branches), per_branch) for v, branches in views.items()}
    state = {v: _ViewPass(estimates[v], qi, slot, num_q, deltas[v], len(branches)) for v, branches in views.items()}
    reranked = {}
    for v, encoding in (encodings or {}).items():
        reranked[v] = _RerankedView(encoding, num_q, num_g, block_rows, chunk_size, device)
        rk_estimates = reranked[v].estimates(estimates[v], qi, gi)
        rk_delta = reranked[v].delta(estimates[v], qi, deltas[v])
        state[v + "+rk"] = _ViewPass(rk_estimates, qi, slot, num_q, rk_delta, 1)

    # The positives ordered by (block, query), so each (block, chunk) holds a contiguous run of them.
    block_of = gi_np // block_rows
    pair_order = np.lexsort((qi_np, block_of))
    keys = block_of[pair_order] * num_q + qi_np[pair_order]
    pair_order_t = torch.from_numpy(pair_order).to(device)
    q_pids_t = torch.from_numpy(q_pids).to(device)
    g_pids_t = torch.from_numpy(g_pids).to(device)
    not_junk = g_pids_t != JUNK_PID
    chunks = range(0, num_q, chunk_size)
    for g0 in range(0, num_g, block_rows):
        g1 = min(g0 + block_rows, num_g)
        block = {n: gallery[n][g0:g1].to(device) for n in names}
        g_inv = {n: inverse_norms(g) for n, g in block.items()}
        bounds = np.searchsorted(
            keys, [(g0 // block_rows) * num_q + q0 for q0 in chunks] + [(g0 // block_rows + 1) * num_q]
        )
        for c, q0 in enumerate(chunks):
            q1 = min(q0 + chunk_size, num_q)
            idx = pair_order_t[int(bounds[c]) : int(bounds[c + 1])]
            pairs = (idx, qi[idx] - q0, gi[idx] - g0)
            # Kept negatives of the tile: another pid, not junk (shared by the views).
            candidates = (q_pids_t[q0:q1, None] != g_pids_t[None, g0:g1]).logical_and_(not_junk[None, g0:g1])
            fused = None
            for n in names:
                dist = cosine_distance_rows(query[n][q0:q1], block[n], q_inv[n][q0:q1], g_inv[n], upcast=upcast)
                state[n].update(dist, q0, g0, pairs, candidates)
                if n in reranked:
                    state[n + "+rk"].update(reranked[n].tile(dist, q0, g0), q0, g0, pairs, candidates)
                if n in fusion:
                    # Summed in place in the features' order, as the streaming path does.
                    fused = dist if fused is None else fused.add_(dist)
                del dist
            if fusion:
                state["fusion"].update(fused, q0, g0, pairs, candidates)
                if "fusion" in reranked:
                    state["fusion+rk"].update(reranked["fusion"].tile(fused, q0, g0), q0, g0, pairs, candidates)
            del fused
        del block, g_inv

    results = {}
    outputs = [(v, b, None) for v, b in views.items()] + [(v + "+rk", views[v], reranked[v]) for v in reranked]
    for view, branches, rk in outputs:
        view_pass = state.pop(view)
        # Step 3: the bound behind every count, checked for every positive (NaN fails).
        outside = ~((view_pass.values - view_pass.estimates).abs() <= view_pass.delta)
        failed = torch.zeros(num_q, dtype=torch.bool, device=device)
        failed[qi[outside]] = True
        good = (num_pos > 0) & ~failed
        query_of, j, rank = view_pass.ranks(qi, gi, good)
        del view_pass
        width = max(int(num_pos.max().item()), 1)
        ranks = torch.zeros(num_q, width, dtype=torch.float64, device=device)
        ranks[query_of, j - 1] = rank.to(torch.float64)
        precision = torch.zeros_like(ranks)
        precision[query_of, j - 1] = j.to(torch.float64) / rank.to(torch.float64)
        n = num_pos.clamp_min(1)
        last = (n - 1)[:, None]
        # AP summed left to right (cumsum), as the streaming path's index_add does.
        ap = torch.cumsum(precision, 1).gather(1, last).squeeze(1) / n
        inp = n / ranks.gather(1, last).squeeze(1)
        first = ranks[:, 0]

        evaluator = evaluator_type(g_pids, g_camids, cmc_len, device)
        for q0 in chunks:
            keep = good[q0 : q0 + chunk_size]
            evaluator.ap_sum += ap[q0 : q0 + chunk_size][keep].sum()
            evaluator.inp_sum += inp[q0 : q0 + chunk_size][keep].sum()
            evaluator.num_valid += keep.sum()
            top = first[q0 : q0 + chunk_size][keep].to(torch.int64)
            top = top[top <= cmc_len]
            evaluator.first_rank_hist += torch.bincount(top - 1, minlength=cmc_len)
        fallback = torch.nonzero(failed).squeeze(1)
        for start in range(0, fallback.shape[0], chunk_size):
            rows = fallback[start : start + chunk_size]
            dist = _rows_of(query, gallery, q_inv, branches, rows, block_rows, device, upcast)
            if rk is not None:
                dist = rk.rows(dist, rows)
            rows_np = rows.cpu().numpy()
            evaluator.update(dist, q_pids[rows_np], q_camids[rows_np])
            del dist
        results[view] = evaluator.compute()
    return results
