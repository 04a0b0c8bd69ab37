"""Exact k nearest neighbours of every item among all items, in blocks (no N x N matrix).

For each item i of an ``ItemFeatures`` (queries then gallery, N items) and each requested view (one
branch, or the sum of several branches' cosine distances) this finds

* the k items j with the smallest distance D[i, j], i itself included, ordered by (D[i, j], j): the
  first k of a full stable sort of row i, so ties are broken by the lower index, at the boundary too;
* the row maximum of the squared distance, max_j D[i, j]^2 over all N items (re-ranking normalises by it).

Blocks. The items are cut into ranges of at most ``block_size`` (queries and gallery separately); for
every pair of ranges I <= J the (|I|, |J|) distance block is computed once per branch, as 1 - <x_i / |x_i|,
x_j / |x_j|> in one GEMM (``torch.addmm`` with beta = 1 on a broadcast 1; the evaluation's cosine
distance up to float rounding), into buffers reused from block to block. It serves rows I (their
candidates in J) and, transposed, rows J (their candidates in I), so each distance is computed once and
the matrix is taken as symmetric, as a distance is: half the N^2 products.

Selection. First the diagonal blocks, of a quarter range each (a diagonal block computes both halves of
a symmetric product; the rest of a range's own block goes with the blocks above the diagonal):
``smallest_k`` gives each row its exact k smallest there, so every list has a k-th distance, an upper
bound on the final one. Then each block above the
diagonal: a distance can enter row i's list only if it is at most the list's current k-th (equal ones too,
for the ties by index), so one comparison per direction selects the few candidates (about k ln(N /
block_size) a row in all for features in random order), and ``merge_smallest`` folds them into the lists
(``smallest_k`` first, where a row has more than k). The lists only improve, so a distance left out is
above the final k-th: the result equals a full stable sort. The row maximum of D^2 is max(max_j D,
-min_j D)^2: max_j D from one reduction per block and direction, min_j D is the list's first distance.

Exact ties. ``torch.topk`` does not say which of several equal values it returns. ``smallest_k`` asks
it for k + 1 values: when the (k + 1)-th is larger than the k-th, no value outside the first k equals
the k-th, and the k are the right set; otherwise (a tie across the boundary, rare except for duplicate
features) the row is redone exactly: all values below the k-th, then the lowest-indexed values equal
to it. The k are then ordered by (value, index) with a sort by index and a stable sort by value.

Memory: the block buffers, O(block_size^2) per branch and fused view plus a mask, and the running lists,
O(N k) per view.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .item_features import ItemFeatures


@dataclass
class Neighbours:
    """Each item's k nearest items: ``index`` (N, k) int64 and ``distance`` (N, k), ordered by
    (distance, index), and ``sq_max`` (N,), the maximum squared distance over the item's row."""

    index: torch.Tensor
    distance: torch.Tensor
    sq_max: torch.Tensor

    def check(self, items: ItemFeatures, branches: Sequence[str]) -> None:
        """Raise a ValueError naming the features unless every row maximum is finite and every index is an
        item: a NaN distance never ranks ahead of the padding index N, which would then be used as an item
        (out of range on the CPU, a device-side assert on CUDA). ``ItemFeatures`` refuses features whose
        norms overflow; this guards the result of any search backend."""
        n = items.num_items
        finite = torch.isfinite(self.sq_max)
        if not bool(finite.all()):
            item = int((~finite).nonzero()[0, 0])
            raise ValueError(
                f"the nearest-neighbour search over {items.feature_names(branches)} gave distances that are not "
                f"finite (item {item} of the {items.num_query} queries then the gallery)"
            )
        bad_index = (self.index < 0) | (self.index >= n)
        if self.index.numel() and bool(bad_index.any()):
            item = int(bad_index.any(1).nonzero()[0, 0])
            raise ValueError(
                f"the nearest-neighbour search over {items.feature_names(branches)} returned an index outside "
                f"0 .. {n - 1} for item {item}; its distances are NaN or the search is broken"
            )


def order_by_value_then_index(values: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of (values, index) reordered by value, ties by index (the order of a full stable sort)."""
    index, perm = index.sort(dim=1)
    values = values.gather(1, perm)
    values, perm = values.sort(dim=1, stable=True)
    return values, index.gather(1, perm)


def smallest_k(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest entries of each row of ``values`` (B, W) and their column indices, ordered by
    (value, column): equal to the first k of a stable argsort of each row (see the module docstring).
    ``k`` larger than W returns all W."""
    width = values.shape[1]
    k = min(k, width)
    if k == width:
        index = torch.arange(width, device=values.device).expand(values.shape[0], width)
        return order_by_value_then_index(values, index)
    top, index = torch.topk(values, k + 1, dim=1, largest=False, sorted=True)
    tied = (top[:, k] == top[:, k - 1]).nonzero().flatten()
    top, index = top[:, :k], index[:, :k]
    if tied.numel():
        rows = values.index_select(0, tied)
        kth = top.index_select(0, tied)[:, k - 1 :]
        less = rows < kth
        equal = rows == kth
        need = k - less.sum(1, keepdim=True)
        take = less | (equal & (equal.cumsum(1) <= need))
        exact = take.nonzero()[:, 1].view(-1, k)  # row-major: each row's k columns, ascending
        index = index.index_copy(0, tied, exact)
        top = top.index_copy(0, tied, rows.gather(1, exact))
    return order_by_value_then_index(top, index)


def merge_smallest(
    values: torch.Tensor, index: torch.Tensor, new_values: torch.Tensor, new_index: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest (value, index) pairs of two candidate lists of the same rows, ordered as a stable
    sort would order them; the lists hold different indices (or the padding (inf, N))."""
    values, index = order_by_value_then_index(torch.cat([values, new_values], 1), torch.cat([index, new_index], 1))
    return values[:, :k].contiguous(), index[:, :k].contiguous()


def block_size_for(chunk_size: int, num_items: int) -> int:
    """The side of the distance blocks for a query chunk of ``chunk_size`` rows: about sqrt(chunk_size * N),
    so a block holds no more elements than a chunk's (chunk_size, N) distances, between chunk_size and 4096
    (4096^2 float32 = 64 MiB; larger blocks gain little in GEMM speed)."""
    side = int(math.isqrt(max(chunk_size * num_items, 1)))
    return max(1, min(max(side, chunk_size), 4096, max(num_items, 1)))


@torch.no_grad()
def nearest_neighbours(
    items: ItemFeatures, views: Mapping[str, Sequence[str]], k: int, block_size: int, on_block: Callable | None = None
) -> dict[str, Neighbours]:
    """For each view (name -> the branches whose cosine distances it sums), every item's ``k`` nearest
    items and its row's maximum squared distance; see the module docstring.

    ``on_block(view, rows, cols, block)``, if given, sees every computed block: the view's distances of
    items rows[0]:rows[1] (as rows) to cols[0]:cols[1], for rows[0] <= cols[0] (the upper block triangle,
    which holds every query-to-gallery distance). The block is a work buffer, valid only during the call.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    n = items.num_items
    k = min(k, n)
    views = {name: items.check_branches(branches, f"views[{name!r}]") for name, branches in views.items()}
    needed = list(dict.fromkeys(b for branches in views.values() for b in branches))
    device, dtype = items.device, items.dtype
    lists = {
        name: (
            torch.full((n, k), float("inf"), dtype=dtype, device=device),
            torch.full((n, k), n, dtype=torch.int64, device=device),
        )
        for name in views
    }
    row_max = {name: torch.full((n,), -float("inf"), dtype=dtype, device=device) for name in views}
    # Ranges never span the query / gallery boundary, so that a range's features are a view, not a copy;
    # each set is cut into ranges of equal size (none left short: GEMMs of short ranges run slower).
    ranges = _equal_ranges(0, items.num_query, block_size) + _equal_ranges(items.num_query, n, block_size)
    blocks = _BlockBuffers(items, views, needed, max(stop - start for start, stop in ranges))

    def view_blocks(rows, cols, unit_rows, unit_cols):
        for name, block in blocks.compute(rows, cols, unit_rows, unit_cols):
            if on_block is not None:
                on_block(name, rows, cols, block)
            yield name, block

    # 1. The diagonal blocks: each item's k nearest within its own range start its list, so that every
    #    list has a finite k-th distance (a bound on the final one) before the other blocks. A diagonal
    #    block computes both halves of a symmetric product: they are taken a quarter of the side at a time
    #    (the rest of a range's own block then goes with the blocks above the diagonal), so that they
    #    add 1/8 rather than 1/2 of a block per range to the half of the N^2 products.
    pairs = []
    diagonal = []
    for rows in ranges:
        step = max(1, -(-(rows[1] - rows[0]) // 4))
        parts = [(start, min(start + step, rows[1])) for start in range(rows[0], rows[1], step)]
        diagonal += parts
        pairs += [(a, b) for position, a in enumerate(parts) for b in parts[position + 1 :]]
    for rows in diagonal:
        unit = {b: items.unit_rows(b, *rows) for b in needed}
        for name, block in view_blocks(rows, rows, unit, unit):
            values, index = lists[name]
            top, where = smallest_k(block, k)
            values[rows[0] : rows[1], : top.shape[1]], index[rows[0] : rows[1], : top.shape[1]] = top, where + rows[0]
            _update_max(row_max[name][rows[0] : rows[1]], block.amax(dim=1))
    # 2. The blocks above the diagonal serve rows I (their candidates in J) and, transposed, rows J. Only a
    #    distance at most the row's current k-th can enter its list: one comparison selects those.
    pairs += [(rows, cols) for position, rows in enumerate(ranges) for cols in ranges[position + 1 :]]
    unit_rows, last_rows = None, None
    for rows, cols in pairs:
        if rows != last_rows:
            unit_rows, last_rows = {b: items.unit_rows(b, *rows) for b in needed}, rows
        unit_cols = {b: items.unit_rows(b, *cols) for b in needed}
        for name, block in view_blocks(rows, cols, unit_rows, unit_cols):
            values, index = lists[name]
            _update_max(row_max[name][rows[0] : rows[1]], block.amax(dim=1))
            _update_max(row_max[name][cols[0] : cols[1]], block.amax(dim=0))
            mask = blocks.mask(block.shape)
            torch.le(block, values[rows[0] : rows[1], k - 1 :], out=mask)
            r, c = mask.nonzero(as_tuple=True)  # row-major: each row's candidates by ascending column
            _merge_candidates(values, index, r + rows[0], c + cols[0], block[r, c], k)
            torch.le(block, values[cols[0] : cols[1], k - 1][None, :], out=mask)
            r, c = mask.nonzero(as_tuple=True)
            order = torch.argsort(c, stable=True)  # by column item, then ascending row
            r, c = r[order], c[order]
            _merge_candidates(values, index, c + cols[0], r + rows[0], block[r, c], k)
        del unit_cols
    del unit_rows
    found = {}
    for name, (values, index) in lists.items():
        # max_j D^2 = max(max_j D, -min_j D)^2 (squaring is monotone in |D|), and the row minimum is the
        # list's first distance.
        peak = torch.maximum(row_max[name], values[:, 0].neg())
        found[name] = Neighbours(index=index, distance=values, sq_max=peak.mul_(peak))
        found[name].check(items, views[name])
    return found


def _equal_ranges(start: int, stop: int, most: int) -> list[tuple[int, int]]:
    """[start, stop) cut into the fewest ranges of at most ``most`` items, of sizes differing by at most 1."""
    parts = -(-(stop - start) // most)
    if parts < 1:
        return []
    bounds = [start + (stop - start) * p // parts for p in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _update_max(running: torch.Tensor, new: torch.Tensor) -> None:
    torch.maximum(running, new, out=running)


class _BlockBuffers:
    """The distance blocks of one pair of ranges for every branch and view, in buffers reused from block to
    block (a fresh block of this size would be allocated and page-faulted each time). oneDNN's product
    comes in a tensor of its own: the branch buffers are then never made."""

    def __init__(self, items: ItemFeatures, views, needed, side: int):
        self.items, self.views, self.needed, self.side = items, views, needed, side
        self.branch = {}
        self.view = {name: self._make() for name, branches in views.items() if len(branches) > 1}
        self.flags = torch.empty(side * side, dtype=torch.bool, device=items.device)
        self.one = torch.ones((), dtype=items.dtype, device=items.device)

    def compute(self, rows, cols, unit_rows, unit_cols):
        """(view, block) for every view: block[i, j] = the view's distance of items rows[0] + i, cols[0] + j."""
        shape = (rows[1] - rows[0], cols[1] - cols[0])
        size = shape[0] * shape[1]
        branch = {}
        for b in self.needed:
            # 1 - <x_i / |x_i|, x_j / |x_j|>
            product = _onednn_product(unit_rows[b], unit_cols[b])
            if product is not None:
                branch[b] = torch.sub(self.one, product, out=product)
            else:  # in the GEMM itself (beta = 1 on a broadcast 1, alpha = -1), into the reused buffer
                if b not in self.branch:
                    self.branch[b] = self._make()
                out = self.branch[b][:size].view(shape)
                branch[b] = torch.addmm(self.one, unit_rows[b], unit_cols[b].T, alpha=-1, out=out)
        for name, branches in self.views.items():
            if len(branches) == 1:
                yield name, branch[branches[0]]
                continue
            block = torch.add(branch[branches[0]], branch[branches[1]], out=self.view[name][:size].view(shape))
            for b in branches[2:]:
                block.add_(branch[b])
            yield name, block

    def _make(self) -> torch.Tensor:
        return torch.empty(self.side * self.side, dtype=self.items.dtype, device=self.items.device)

    def mask(self, shape) -> torch.Tensor:
        return self.flags[: shape[0] * shape[1]].view(shape)


_ONEDNN = {"usable": None}


def _onednn_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """a @ b.T for float32 CPU tensors through oneDNN's float32 matmul (torch's mkldnn linear), or None where
    that is not available (then the caller uses torch's GEMM). torch.matmul on the CPU calls MKL's sgemm,
    which on AMD processors runs its AVX2 code: oneDNN's AVX-512 kernel is about twice as fast there. Both
    are float32 products with float32 accumulation (oneDNN's strict default math mode); they round in
    another order."""
    if a.device.type != "cpu" or a.dtype != torch.float32 or _ONEDNN["usable"] is False:
        return None
    try:
        out = torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [None], "")
    except (AttributeError, NotImplementedError, RuntimeError):
        _ONEDNN["usable"] = False
        return None
    _ONEDNN["usable"] = True
    return out


def _merge_candidates(values, index, item, cand, dist, k: int) -> None:
    """Fold candidate neighbours (item[p] -> cand[p] at distance dist[p]; grouped by item, each item's
    candidates in ascending order) into the running lists."""
    if item.numel() == 0:
        return
    n = values.shape[0]
    rows, counts = torch.unique_consecutive(item, return_counts=True)
    width = int(counts.max())
    group = torch.repeat_interleave(torch.arange(rows.shape[0], device=item.device), counts)
    first = torch.cumsum(counts, 0) - counts
    pos = torch.arange(item.shape[0], device=item.device) - first[group]
    pad_values = torch.full((rows.shape[0], width), float("inf"), dtype=values.dtype, device=values.device)
    pad_index = torch.full((rows.shape[0], width), n, dtype=torch.int64, device=values.device)
    pad_values[group, pos] = dist
    pad_index[group, pos] = cand
    if width > k:
        # the padding (inf, N) is never among a row's k smallest real candidates: ties keep the column order
        pad_values, where = smallest_k(pad_values, k)
        pad_index = pad_index.gather(1, where)
    top, where = merge_smallest(values[rows], index[rows], pad_values, pad_index, k)
    values[rows], index[rows] = top, where
