"""Row-compressed sparse matrices (CSR) in plain torch tensors, for re-ranking's V and V_qe.

A ``SparseRows`` holds, for each row r, the columns ``col[ptr[r]:ptr[r + 1]]`` (ascending) and
their values ``val[...]``. torch's own sparse CSR tensors are not used: the operations needed here
(gathering rows, summing rows with duplicate columns, a column index) are a few index operations on
these three tensors, the same on the CPU and on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SparseRows:
    ptr: torch.Tensor  # (rows + 1,) int64, ptr[0] = 0
    col: torch.Tensor  # (nnz,) int64
    val: torch.Tensor  # (nnz,)

    @property
    def num_rows(self) -> int:
        return self.ptr.shape[0] - 1

    @property
    def nnz(self) -> int:
        return self.col.shape[0]

    def row_counts(self) -> torch.Tensor:
        return self.ptr[1:] - self.ptr[:-1]

    def entries_of(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(owner, position) of every stored entry of the given rows, in the rows' order and each row's
        column order: ``owner[e]`` is the index into ``rows``, ``position[e]`` the entry in col / val."""
        return expand_ranges(self.ptr[rows], self.ptr[rows + 1])

    @staticmethod
    def from_sorted_entries(num_rows: int, row: torch.Tensor, col: torch.Tensor, val: torch.Tensor) -> SparseRows:
        """From entries sorted by (row, column) without duplicates."""
        counts = torch.bincount(row, minlength=num_rows)
        ptr = torch.zeros(num_rows + 1, dtype=torch.int64, device=col.device)
        torch.cumsum(counts, 0, out=ptr[1:])
        return SparseRows(ptr=ptr, col=col, val=val)


def expand_ranges(starts: torch.Tensor, stops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ranges [starts[r], stops[r]): (owner r, position) of every position, ranges in order."""
    counts = stops - starts
    owner = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
    first = torch.cumsum(counts, 0) - counts  # where each range begins in the output
    position = torch.arange(owner.shape[0], device=counts.device) - first[owner] + starts[owner]
    return owner, position


def sum_duplicates(num_rows: int, num_cols: int, row: torch.Tensor, col: torch.Tensor, val: torch.Tensor) -> SparseRows:
    """A SparseRows from (row, col, val) entries in any order; entries at the same place are added, in
    the order they are given."""
    key = row * num_cols + col
    key, order = key.sort(stable=True)
    unique, inverse = torch.unique_consecutive(key, return_inverse=True)
    total = torch.zeros(unique.shape[0], dtype=val.dtype, device=val.device)
    total.index_add_(0, inverse, val[order])
    return SparseRows.from_sorted_entries(num_rows, unique // num_cols, unique % num_cols, total)
