"""Exact k nearest neighbours of every item among all items, in blocks (no N x N matrix).

For each item i of an ``ItemFeatures`` (queries then gallery, N items) and each requested view (one
branch, or the sum of several branches' cosine distances) this finds

* the k items j with the smallest distance D[i, j], i itself included, ordered by (D[i, j], j): the
  first k of a full stable sort of row i, so ties are broken by the lower index, at the boundary too;
* the row maximum of the squared distance, max_j D[i, j]^2 over all N items (re-ranking normalises by it).

Blocks. The items are cut into ranges of at most ``block_size`` (queries and gallery separately); for
every pair of ranges I <= J the (|I|, |J|) distance block is computed once per branch, as 1 - <x_i, x_j>
/ (|x_i| |x_j|) from one GEMM of the raw features (the evaluation's cosine distance up to float
rounding). It serves rows I (their candidates in J) and, transposed, rows J (their candidates in I), so
each distance is computed once and the matrix is taken as symmetric, as a distance is. Per block and
direction, ``smallest_k`` gives each row's exact k smallest (value, index) pairs within the block, and
``merge_smallest`` folds them into the row's running list. The exact smallest k of a row is the smallest
k of the union of the blocks' exact smallest k, so the result equals a full stable sort.

Exact ties. ``torch.topk`` does not say which of several equal values it returns. ``smallest_k`` asks
it for k + 1 values: when the (k + 1)-th is larger than the k-th, no value outside the first k equals
the k-th, and the k are the right set; otherwise (a tie across the boundary, rare except for duplicate
features) the row is redone exactly: all values below the k-th, then the lowest-indexed values equal
to it. The k are then ordered by (value, index) with a sort by index and a stable sort by value.

Memory: the blocks, O(block_size^2) per branch and view, and the running lists, O(N k) per view.
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
        item. Finite features can still have distances that overflow (a norm or a product past the dtype's
        range gives inf, and inf * 0 gives NaN); a NaN never ranks ahead of the padding index N, which
        would then be used as an item (out of range on the CPU, a device-side assert on CUDA)."""
        n = items.num_items
        finite = torch.isfinite(self.sq_max)
        if not bool(finite.all()):
            item = int((~finite).nonzero()[0, 0])
            raise ValueError(
                f"the cosine distances of {items.feature_names(branches)} are not finite (item {item} of the "
                f"{items.num_query} queries then the gallery): the features are finite but their norms or dot "
                f"products overflow {items.dtype}; scale the features down (e.g. normalise them)"
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
    which holds every query-to-gallery distance).
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
    state = {
        name: [
            torch.full((n, k), float("inf"), dtype=dtype, device=device),
            torch.full((n, k), n, dtype=torch.int64, device=device),
            torch.zeros(n, dtype=dtype, device=device),
        ]
        for name in views
    }
    # Ranges never span the query / gallery boundary, so that a range's features are a view, not a copy.
    q = items.num_query
    starts = sorted(set(range(0, q, block_size)) | set(range(q, n, block_size)))
    ranges = [(start, stop) for start, stop in zip(starts, starts[1:] + [n], strict=True)]
    for position, rows in enumerate(ranges):
        for cols in ranges[position:]:
            blocks = {b: items.branch_block(b, rows, cols) for b in needed}
            for name, branches in views.items():
                block = blocks[branches[0]]
                for b in branches[1:]:
                    block = block + blocks[b]
                if on_block is not None:
                    on_block(name, rows, cols, block)
                _fold_block(state[name], block, rows, cols[0], k)
                if cols != rows:
                    # the same distances serve the column items; topk runs faster on a contiguous copy
                    _fold_block(state[name], block.T.contiguous(), cols, rows[0], k)
                del block
            del blocks
    found = {name: Neighbours(index=s[1], distance=s[0], sq_max=s[2]) for name, s in state.items()}
    for name, result in found.items():
        result.check(items, views[name])
    return found


def _fold_block(state, block: torch.Tensor, rows: tuple[int, int], col_offset: int, k: int) -> None:
    """Fold a block of distances of items rows[0]:rows[1] to the items from ``col_offset`` on into the
    rows' running neighbour lists and squared maxima."""
    values, index, sq_max = state
    # max_j D^2 = max(max_j D, -min_j D)^2: squaring is monotone in |D|, so this is the exact maximum.
    # (amin and amax rather than aminmax, which starts threads even for a tiny block.)
    peak = torch.maximum(block.amax(dim=1), block.amin(dim=1).neg_())
    view = sq_max[rows[0] : rows[1]]
    torch.maximum(view, peak * peak, out=view)
    top, where = smallest_k(block, k)
    top, where = merge_smallest(values[rows[0] : rows[1]], index[rows[0] : rows[1]], top, where + col_offset, k)
    values[rows[0] : rows[1]], index[rows[0] : rows[1]] = top, where
