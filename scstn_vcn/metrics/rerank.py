"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), exactly the function of the distance matrix that the authors' published code
computes (torchreid's and fast-reid's ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)``),
in memory that grows with the number of items, never with its square.

The algorithm. Items are the queries then the gallery (N = q + g); D is their distance (the cosine
distance of one feature, or the sum of several features' cosine distances, as the evaluation ranks).

* D^[i, j] = D[i, j]^2 / max_j' D[i, j']^2 (max over all N columns; a row whose maximum is 0 stays 0).
* N(i, k): the k + 1 items nearest to i by D, i itself included, ties by the lower index (the first
  k + 1 of a full stable sort of row i).
* R(i, k) = {j in N(i, k) : i in N(j, k)}, the k-reciprocal neighbours.
* R*(i) = R(i, k1) united with R(c, h) for every c in R(i, k1) with |R(c, h) & R(i, k1)| > 2/3 |R(c, h)|,
  where h = round(k1 / 2) rounded half to even as the reference's ``int(np.around(k1 / 2.))`` (k1 = 1
  gives h = 0, k1 = 3 gives 2, k1 = 5 gives 2; R(c, 0) is {c} when c is its own nearest item). The 2/3
  test is made in float64 as the reference makes it.
* V[i, j] = exp(-D^[i, j]) / sum_{j' in R*(i)} exp(-D^[i, j']) for j in R*(i), else 0.
* Local query expansion, for k2 > 1: V_qe[i] = mean of V[j] over the k2 items nearest to i (i included);
  for k2 = 1, V_qe = V (the reference skips the step).
* Jaccard distance J[i, j] = 1 - m / (2 - m), m = sum_k min(V_qe[i, k], V_qe[j, k]).
* Final distance of query i and gallery item j: (1 - lambda) J[i, j] + lambda D^[i, j].

The published code ranks the rows of D^ rather than of D; the two orders differ only where squaring or
the division rounds two different distances to the same value, or a distance is a rounding-error
negative, and this module follows the issue's definition (by D).

Bounded memory. Nothing of size N x N exists at any time:

1. ``knn.nearest_neighbours``: one pass over blocks of the distance matrix gives each item's k1 + 1
   nearest items (exact, ties by index) with their distances, and each row's maximum of D^2.
2. R(i, k1), R(c, h): j = index[i, p] is reciprocal when i is among j's first k + 1, a comparison with
   j's gathered list (a chunk of rows at a time). R*(i) is built for a chunk of rows at a time as the
   union of at most (k1 + 1)(h + 2) candidates (the test c's R(c, h) against R(i, k1) reads flags over
   the items set for the chunk's R(i, k1)); V and V_qe are ``SparseRows`` (CSR) with |R*(i)| (about
   1.5 k1) and at most k2 |R*| entries a row. V_qe is computed a chunk of rows at a time, twice: once to
   count, once to keep its query rows and scatter its gallery rows into the column index of step 4, so
   that its gallery rows never exist twice (at millions of items they are the encoding's largest part).
3. D^[i, j] for j in R*(i) is the neighbour list's distance when j is among i's k1 + 1 nearest, else it
   is computed from the two items' features (only the pairs that need it).
4. Query chunks: for queries [s, e) the caller's (chunk, g) distances give D^; m is accumulated through
   an inverted index of the gallery's V_qe (for each column k the gallery items with V_qe[j, k] != 0):
   each stored entry (i, k) of a query adds min(V_qe[i, k], V_qe[j, k]) to m[i, j] for the gallery
   items j of column k, in steps of at most max(chunk * g / 8, g) pairs (32-bit pair indices where they
   fit). Gallery items that share no column with the query keep m = 0, J = 1.

Cost: one GEMM over half the N^2 distances (the symmetric minimum, plus 1/8 of a block per range on the
diagonal); everything else is linear in N (the neighbour lists, the encoding) or in the number of
(query, gallery) pairs (the final mix, and the Jaccard pairs that share a column).

Peak extra memory: O(N k1 (h + 2)) for the neighbour lists and sparse rows, plus O(block^2) for the
distance blocks (block ~ sqrt(chunk * N), at most 4096: no more than a chunk's distances; the buffers are
reused from block to block) and O(chunk * N) for a chunk (its D^, m, the final distances, the membership
flags). Everything is torch code that runs on the tensors' device, CPU or CUDA.

Rounding. Results equal the dense reference up to float rounding (sums in another order, a distance
computed by another kernel); the neighbour lists are exact for the distances as computed. On the CPU
the accumulation of m follows the reference's order (columns ascending), so equal values stay equal;
CUDA adds with atomics, in no fixed order.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch

from .item_features import ItemFeatures
from .knn import Neighbours, block_size_for, nearest_neighbours
from .sparse_rows import SparseRows, expand_ranges, sum_duplicates


def _index_type(size: int) -> torch.dtype:
    """32-bit indices below 2^31 items, else 64-bit."""
    return torch.int32 if size < 2**31 else torch.int64


# Rows per chunk when k_reciprocal_rerank is not told (evaluate_features' DEFAULT_CHUNK_SIZE).
_DEFAULT_CHUNK_ROWS = 512


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class RerankConfig:
    """k-reciprocal re-ranking settings: ``k1`` (>= 1), ``k2`` (1 .. k1 + 1; 1 turns local query
    expansion off) and ``lambda_value`` (weight of the original distance, in [0, 1]). The defaults are
    the paper's (k1 = 20, k2 = 6, lambda = 0.3)."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    def __post_init__(self):
        if not _is_int(self.k1) or self.k1 < 1:
            raise ValueError(f"k1 must be an integer >= 1, got {self.k1!r}")
        if not _is_int(self.k2) or not 1 <= self.k2 <= self.k1 + 1:
            raise ValueError(f"k2 must be an integer from 1 to k1 + 1 = {self.k1 + 1}, got {self.k2!r}")
        lam = self.lambda_value
        if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not 0.0 <= lam <= 1.0:
            raise ValueError(f"lambda_value must be a number in [0, 1], got {lam!r}")
        # numpy scalars become Python numbers, so the settings print and serialise plainly
        object.__setattr__(self, "k1", int(self.k1))
        object.__setattr__(self, "k2", int(self.k2))
        object.__setattr__(self, "lambda_value", float(lam))

    @property
    def expansion_k(self) -> int:
        """h = round(k1 / 2), half to even (as np.around): the k of the candidates' reciprocal sets."""
        return int(round(self.k1 / 2))

    def as_dict(self) -> dict:
        return asdict(self)

    def check_items(self, num_query: int, num_gallery: int) -> None:
        """Raise a ValueError naming k1 unless the data has at least k1 + 1 items (queries + gallery): every
        item's k1 + 1 nearest, itself included, must exist (k2 <= k1 + 1 then holds for the data too)."""
        n = num_query + num_gallery
        if self.k1 > n - 1:
            raise ValueError(
                f"rerank k1 = {self.k1} must be at most the number of items - 1 = {n - 1} ({num_query} queries + "
                f"{num_gallery} gallery items): re-ranking needs each item's k1 + 1 nearest items, itself included"
            )


def _check_chunk(chunk_size) -> int:
    if not _is_int(chunk_size) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return int(chunk_size)


def _reciprocal(index: torch.Tensor, width: int, chunk_size: int) -> torch.Tensor:
    """(N, width) bool: whether i is among the first ``width`` neighbours of j = index[i, p], for chunks of
    rows at a time (each gathers its neighbours' lists: chunk x width^2)."""
    n = index.shape[0]
    first = index[:, :width].contiguous()  # whole rows: index_select copies them, much faster than indexing
    out = torch.empty(n, width, dtype=torch.bool, device=index.device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        # (rows, width, width): each neighbour's own first `width`
        back = first.index_select(0, first[start:stop].flatten()).view(stop - start, width, width)
        rows = torch.arange(start, stop, device=index.device)[:, None, None]
        torch.any(back == rows, dim=2, out=out[start:stop])
    return out


class KReciprocalEncoding:
    """The k-reciprocal encoding of all N items for one view, ready to re-rank query chunks.

    ``KReciprocalEncoding(items, branches, neighbours, config, chunk_size)``: ``neighbours`` are the
    view's k1 + 1 nearest items (``knn.nearest_neighbours``); ``branches`` the features whose cosine
    distances the view sums. ``distances(start, stop, dist)`` turns the view's (stop - start, g)
    distances of queries [start, stop) into re-ranked distances.

    The features are read while the encoding is built and not kept: the query chunks need only the
    sparse encoding and the row maxima, so a caller that drops its ``items`` frees their device copies.
    """

    def __init__(self, items: ItemFeatures, branches, neighbours: Neighbours, config: RerankConfig, chunk_size: int):
        self.branches = items.check_branches(branches)
        self.config = config
        self.chunk_size = _check_chunk(chunk_size)
        self.num_query, self.num_gallery, self.device = items.num_query, items.num_gallery, items.device
        config.check_items(items.num_query, items.num_gallery)
        n = items.num_items
        if neighbours.index.shape != (n, config.k1 + 1):
            raise ValueError(
                f"neighbours must hold the k1 + 1 = {config.k1 + 1} nearest of each of the {n} items, "
                f"got shape {tuple(neighbours.index.shape)}"
            )
        neighbours.check(items, self.branches)
        # A row whose maximum is 0 has only zero distances: divide it by 1.
        self.denominator = torch.where(neighbours.sq_max > 0, neighbours.sq_max, torch.ones_like(neighbours.sq_max))
        v = self._encode(items, neighbours)
        self._build_from_chunks(v, neighbours.index)
        del v

    # ---------------------------------------------------------------------------------- V

    def _encode(self, items: ItemFeatures, neighbours: Neighbours) -> SparseRows:
        n, dev = items.num_items, items.device
        index = neighbours.index
        k = index.shape[1]
        kh = min(self.config.expansion_k + 1, k)
        recip = _reciprocal(index, k, self.chunk_size)
        recip_half = _reciprocal(index, kh, self.chunk_size)
        half_size = recip_half.sum(1).to(torch.float64)
        # membership in R(i, k1) of a chunk's rows, as flags over all items (cleared after each chunk)
        member = torch.zeros(min(self.chunk_size, n), n, dtype=torch.bool, device=dev)
        index_half = index[:, :kh].contiguous()
        counts_out, cols_out, vals_out = [], [], []
        for start in range(0, n, self.chunk_size):
            stop = min(start + self.chunk_size, n)
            cand, ok = index[start:stop], recip[start:stop]  # R(i, k1) = cand[ok]
            shape = (stop - start, k, kh)
            half = index_half.index_select(0, cand.flatten()).view(shape)  # the candidates' h + 1 nearest
            half_ok = recip_half.index_select(0, cand.flatten()).view(shape)  # ... that are reciprocal: R(c, h)
            flags = member[: stop - start]
            r_local, r_pos = ok.nonzero(as_tuple=True)
            flags[r_local, cand[r_local, r_pos]] = True
            inside = flags.gather(1, half.flatten(1)).view(half.shape) & half_ok
            flags[r_local, cand[r_local, r_pos]] = False
            overlap = inside.sum(2).to(torch.float64)
            expand = ok & (overlap > (2.0 / 3.0) * half_size[cand])
            # R*(i): R(i, k1) and the R(c, h) of the expanded candidates, deduplicated and ascending
            h_local, h_cand, h_pos = (half_ok & expand[:, :, None]).nonzero(as_tuple=True)
            keys = torch.cat([r_local * n + cand[r_local, r_pos], h_local * n + half[h_local, h_cand, h_pos]])
            keys = torch.unique(keys)  # sorted: row-major, each row's members ascending
            local, col = keys // n, keys % n
            row = local + start
            del inside, half, half_ok, keys
            d = self._pair_distances(items, neighbours, row, col)
            weight = torch.exp((d * d).div_(self.denominator[row]).neg_())
            total = torch.zeros(stop - start, dtype=weight.dtype, device=dev).index_add_(0, local, weight)
            counts_out.append(torch.bincount(local, minlength=stop - start))
            cols_out.append(col.to(_index_type(n)))  # 32-bit where they fit: V has N x |R*| entries
            vals_out.append(weight.div_(total[local]))
            del row, col, local
        ptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
        torch.cumsum(torch.cat(counts_out), 0, out=ptr[1:])
        return SparseRows(ptr=ptr, col=torch.cat(cols_out), val=torch.cat(vals_out))

    def _pair_distances(self, items: ItemFeatures, neighbours: Neighbours, row, col) -> torch.Tensor:
        """D[row[p], col[p]]: from the neighbour lists where col is among row's nearest, else computed."""
        hit = neighbours.index.index_select(0, row) == col[:, None]
        found = hit.any(1)
        where = hit.to(torch.uint8).argmax(1)  # the list position of col where found
        out = neighbours.distance[row, where]
        missing = (~found).nonzero().flatten()
        if missing.numel():
            out[missing] = items.pair_distances(self.branches, row[missing], col[missing]).to(out.dtype)
        return out

    def _expanded_chunks(self, v: SparseRows, index: torch.Tensor):
        """(start, stop, rows [start, stop) of V_qe as a SparseRows), a chunk of rows at a time: V_qe[i] = mean
        of V[j] over i's k2 nearest items (V itself when k2 = 1). A row's sum depends on that row alone, so
        the chunks give the same values whenever they are computed."""
        n, k2 = v.num_rows, self.config.k2
        for start in range(0, n, self.chunk_size):
            stop = min(start + self.chunk_size, n)
            if k2 == 1:
                a, b = int(v.ptr[start]), int(v.ptr[stop])
                yield start, stop, SparseRows(ptr=v.ptr[start : stop + 1] - a, col=v.col[a:b], val=v.val[a:b])
                continue
            nbr = index[start:stop, :k2].flatten()  # (i, p) row-major: V[j] summed in neighbour order
            owner, pos = v.entries_of(nbr)
            part = sum_duplicates(stop - start, n, owner // k2, v.col[pos], v.val[pos])
            yield start, stop, SparseRows(ptr=part.ptr, col=part.col.to(_index_type(n)), val=part.val.div_(k2))

    def _build_from_chunks(self, v: SparseRows, index: torch.Tensor) -> None:
        """V_qe's query rows (``v_qe``) and, for each column k, the gallery items j with V_qe[j, k] != 0
        (ascending) and the values (``column_ptr``, ``column_rows``, ``column_vals``).

        V_qe is computed twice, a chunk of rows at a time, and never held whole: the first pass counts each
        row's entries and each column's gallery entries; the second copies the query rows into place and
        scatters each chunk's gallery entries to their columns (a stable sort of the chunk's entries by
        column; chunks in row order, so each column's rows ascend). At millions of items the gallery's rows
        of V_qe are the encoding's largest part; they exist only once, transposed."""
        q, n = self.num_query, v.num_rows
        dev = v.col.device
        row_counts = torch.zeros(n, dtype=torch.int64, device=dev)
        column_counts = torch.zeros(n, dtype=torch.int64, device=dev)
        for start, stop, part in self._expanded_chunks(v, index):
            row_counts[start:stop] = part.row_counts()
            gallery_cols = part.col[int(part.ptr[min(max(q - start, 0), stop - start)]) :].long()
            column_counts.index_add_(0, gallery_cols, torch.ones_like(gallery_cols))
        query_ptr = torch.zeros(q + 1, dtype=torch.int64, device=dev)
        torch.cumsum(row_counts[:q], 0, out=query_ptr[1:])
        query_col = torch.empty(int(query_ptr[-1]), dtype=_index_type(n), device=dev)
        query_val = torch.empty(int(query_ptr[-1]), dtype=v.val.dtype, device=dev)
        self.column_ptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
        torch.cumsum(column_counts, 0, out=self.column_ptr[1:])
        del row_counts, column_counts
        entries = int(self.column_ptr[-1])
        self.column_rows = torch.empty(entries, dtype=_index_type(self.num_gallery), device=dev)  # gallery-local
        self.column_vals = torch.empty(entries, dtype=v.val.dtype, device=dev)
        next_free = self.column_ptr[:-1].clone()
        for start, stop, part in self._expanded_chunks(v, index):
            split = min(max(q - start, 0), stop - start)  # the chunk's first gallery row, chunk-local
            e = int(part.ptr[split])
            if split:
                at = int(query_ptr[start])
                query_col[at : at + e] = part.col[:e]
                query_val[at : at + e] = part.val[:e]
            if split == stop - start:
                continue
            cols, order = torch.sort(part.col[e:].long(), stable=True)
            columns, counts = torch.unique_consecutive(cols, return_counts=True)
            # the sorted entries fill each column's next free positions, columns in order
            _, dest = expand_ranges(next_free[columns], next_free[columns] + counts)
            owner = torch.repeat_interleave(
                torch.arange(start + split - q, stop - q, device=dev), part.row_counts()[split:]
            )
            self.column_rows[dest] = owner[order].to(self.column_rows.dtype)
            self.column_vals[dest] = part.val[e:][order]
            next_free[columns] += counts
        self.v_qe = SparseRows(ptr=query_ptr, col=query_col, val=query_val)

    def _overlap_steps(self, start: int, stop: int, itype: torch.dtype):
        """The terms of m for queries [start, stop), in steps: (target, value) with target = local query row
        * g + gallery item and value = min(V_qe[i, k], V_qe[j, k]), in the reference's order (each query's
        columns ascending)."""
        g, dev = self.num_gallery, self.device
        owner, pos = self.v_qe.entries_of(torch.arange(start, stop, device=dev))
        cols, vals = self.v_qe.col[pos], self.v_qe.val[pos]
        lo = self.column_ptr[cols]
        counts = self.column_ptr[cols + 1] - lo
        ends = torch.cumsum(counts, 0)
        base = (owner * g).to(itype)  # where each entry's query row starts in m
        # pairs per step: about 30 bytes of index and value arrays a pair, so 1/8 of the chunk's (chunk, g)
        # keeps them below the size of m itself
        budget = max((stop - start) * g // 8, g)
        first = 0
        while first < cols.shape[0]:
            done = int(ends[first - 1]) if first else 0
            last = int(torch.searchsorted(ends, torch.tensor(done + budget, device=dev), right=True))
            last = max(last, first + 1)  # one entry expands to at most g pairs
            total = int(ends[last - 1]) - done
            cnt = counts[first:last]
            # entry e's pairs are the column positions lo[e] ..; pair p of the step sits at p + shift[e]
            shift = (lo[first:last] - (ends[first:last] - cnt - done)).to(itype)
            where = torch.arange(total, dtype=itype, device=dev).add_(
                torch.repeat_interleave(shift, cnt, output_size=total)
            )
            target = torch.repeat_interleave(base[first:last], cnt, output_size=total)
            target.add_(self.column_rows[where].to(itype))
            value = torch.repeat_interleave(vals[first:last], cnt, output_size=total)
            torch.minimum(value, self.column_vals[where], out=value)
            yield target, value
            first = last

    def jaccard_overlap(self, start: int, stop: int) -> torch.Tensor:
        """m[i, j] = sum_k min(V_qe[i, k], V_qe[j, k]) for queries [start, stop) and all gallery items."""
        m = torch.zeros(stop - start, self.num_gallery, dtype=self.v_qe.val.dtype, device=self.device)
        # The pairs' index arrays are the work here: 32-bit where m's positions fit (half the memory traffic).
        itype = torch.int32 if m.numel() < 2**31 and self.column_rows.numel() < 2**31 else torch.int64
        flat = m.view(-1)
        for target, value in self._overlap_steps(start, stop, itype):
            flat.index_add_(0, target, value)
        return m

    def jaccard_pairs(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The non-zero m of ``jaccard_overlap(start, stop)`` as (local query row, gallery item, m), sorted by
        (row, item): the same sums in the same order, so the same values, in memory that grows with the
        pairs that share a column rather than with chunk x g."""
        g = self.num_gallery
        targets, values = [], []
        for target, value in self._overlap_steps(start, stop, torch.int64):
            targets.append(target)
            values.append(value)
        if not targets:
            empty = torch.empty(0, dtype=torch.int64, device=self.device)
            return empty, empty, torch.empty(0, dtype=self.v_qe.val.dtype, device=self.device)
        keys, inverse = torch.unique(torch.cat(targets), return_inverse=True)
        m = torch.zeros(keys.shape[0], dtype=self.v_qe.val.dtype, device=self.device)
        m.index_add_(0, inverse, torch.cat(values))
        return keys // g, keys % g, m

    def distances(self, start: int, stop: int, dist: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Re-ranked (stop - start, g) distances of queries [start, stop), given the view's distances
        ``dist`` of those queries to the gallery (not modified unless it is ``out``), written to ``out``
        if given (a tensor of that shape and the encoding's dtype), else to a new tensor."""
        shape = (stop - start, self.num_gallery)
        if dist.shape != shape:
            raise ValueError(f"dist must have shape {shape}, got {tuple(dist.shape)}")
        m = self.jaccard_overlap(start, stop)
        dist = dist.to(m.dtype)
        if out is None:
            out = torch.empty_like(m)
        elif out.shape != shape or out.dtype != m.dtype:
            raise ValueError(f"out must be a {m.dtype} tensor of shape {shape}, got {out.dtype} {tuple(out.shape)}")
        torch.mul(dist, dist, out=out).div_(self.denominator[start:stop, None]).mul_(float(self.config.lambda_value))
        return out.add_(self.jaccard_term(m))

    def jaccard_term(self, m: torch.Tensor) -> torch.Tensor:
        """(1 - m / (2 - m)) (1 - lambda), in place in ``m``, rounded step by step as the reference rounds it
        (equal values stay equal); m = 0 gives exactly 1 - lambda. The final distance is
        D^2 / max * lambda (in that order) plus this."""
        m.div_(torch.sub(torch.tensor(2.0, dtype=m.dtype, device=m.device), m))
        return torch.sub(torch.tensor(1.0, dtype=m.dtype, device=m.device), m, out=m).mul_(
            1.0 - self.config.lambda_value
        )


def _as_items(query, gallery, device) -> ItemFeatures:
    if isinstance(query, Mapping) != isinstance(gallery, Mapping):
        raise TypeError("query and gallery must both be tensors or both be dicts of features")
    if not isinstance(query, Mapping):
        query, gallery = {"feature": query}, {"feature": gallery}
    return ItemFeatures(query, gallery, device, query_name="query", gallery_name="gallery")


@torch.no_grad()
def k_reciprocal_rerank(
    query, gallery, config: RerankConfig | None = None, *, chunk_size: int = _DEFAULT_CHUNK_ROWS, device=None
) -> torch.Tensor:
    """Re-ranked (q, g) distances between query and gallery features (see the module docstring).

    ``query`` (q, D) and ``gallery`` (g, D) are tensors or numpy arrays, or dicts of features with
    the same names (e.g. what ``FeatureExtractor`` returns): the distance is then the sum of their
    cosine distances, as evaluation's "fusion"; query and gallery features of different dtypes are
    promoted to one (``torch.promote_types``; float16 / bfloat16 features are re-ranked as their float32
    upcast). ``config`` defaults to ``RerankConfig()``; its k1 must be below q + g. Work is done
    in chunks of ``chunk_size`` rows on ``device`` (default: the features'); the result, on that device,
    is the only (q, g) array; nothing of size (q + g)^2 is built.
    """
    config = RerankConfig() if config is None else config
    if not isinstance(config, RerankConfig):
        raise TypeError(f"config must be a RerankConfig, got {type(config).__name__}")
    chunk_size = _check_chunk(chunk_size)
    items = _as_items(query, gallery, device)
    config.check_items(items.num_query, items.num_gallery)
    branches, q = tuple(items.branches), items.num_query
    out = torch.empty(q, items.num_gallery, dtype=items.dtype, device=items.device)

    def keep_query_to_gallery(view, rows, cols, block):
        # The neighbour pass computes every query-to-gallery distance once: keep them in the output.
        row_stop, col_start = min(rows[1], q), max(cols[0], q)
        if rows[0] < row_stop and col_start < cols[1]:
            out[rows[0] : row_stop, col_start - q : cols[1] - q] = block[: row_stop - rows[0], col_start - cols[0] :]

    block = block_size_for(chunk_size, items.num_items)
    neighbours = nearest_neighbours(items, {"view": branches}, config.k1 + 1, block, on_block=keep_query_to_gallery)
    encoding = KReciprocalEncoding(items, branches, neighbours.pop("view"), config, chunk_size)
    del items, neighbours  # the chunks read only the encoding and ``out``
    for start in range(0, q, chunk_size):
        stop = min(start + chunk_size, q)
        encoding.distances(start, stop, out[start:stop], out=out[start:stop])
    return out
