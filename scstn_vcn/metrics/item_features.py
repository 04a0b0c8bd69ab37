"""The query and gallery features of one evaluation as one list of items, for the passes that need
distances among all of them (k-reciprocal re-ranking, query expansion).

Item t is query t for t < num_query and gallery item t - num_query after that, as in the
(q + g) x (q + g) matrix of re-ranking. The two sets are never concatenated (that would copy every
feature once more): a range or a list of items is read from whichever set holds it.

The distance between two items is the evaluation's: the cosine distance of one feature, or for a
fused view the sum of the cosine distances of several features ("branches"), added in the order the
branches are given (the order evaluate_features sums them in).

Dtypes. A branch's query and gallery features are held in one dtype, ``torch.promote_types`` of the
two (float16 with float32 -> float32, float16 with bfloat16 -> float32, anything with float64 ->
float64): the set in the other dtype is converted once (a copy of that set only). Distances are
computed in float32 (float64 if any feature is float64); float16 / bfloat16 features are upcast
before every product, on the GPU too, so they give the distances of their float32 upcast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .distance import _as_feature_tensor, compute_dtype, cosine_distance_rows, inverse_norms

# Pairwise distances on demand gather both items' features: pairs are taken in blocks of at most
# this many gathered elements per side (2^22 float32 = 16 MiB), so a block's memory does not grow
# with the feature width.
_PAIR_BLOCK_ELEMENTS = 1 << 22


def _all_finite(x: torch.Tensor) -> bool:
    # In blocks of rows: torch.isfinite on a whole feature matrix makes temporaries larger than the matrix.
    step = max(1, _PAIR_BLOCK_ELEMENTS // max(x.shape[1], 1))
    return all(bool(torch.isfinite(x[start : start + step]).all()) for start in range(0, x.shape[0], step))


class ItemFeatures:
    """ItemFeatures(query, gallery, device): per branch a query (q, D) and a gallery (g, D) tensor.

    ``query`` and ``gallery`` map branch names to tensors with the same names and dimensions; every
    tensor is moved to ``device`` once, and a branch's two sets to their promoted dtype (see the module
    docstring). Distances are float32 (float64 for float64 features).
    """

    def __init__(
        self,
        query: Mapping[str, torch.Tensor],
        gallery: Mapping[str, torch.Tensor],
        device=None,
        query_name: str = "query_feats",
        gallery_name: str = "gallery_feats",
    ):
        if not isinstance(query, Mapping) or not isinstance(gallery, Mapping):
            raise TypeError(f"{query_name} and {gallery_name} must map a feature name to a (N, D) tensor")
        if set(query) != set(gallery) or not query:
            raise ValueError(
                f"{query_name} and {gallery_name} must have the same, non-empty feature names, got "
                f"{sorted(query)} and {sorted(gallery)}"
            )
        self.branches = list(query)
        self.query_name, self.gallery_name = query_name, gallery_name
        self.query, self.gallery = {}, {}
        for name in self.branches:
            q = _as_feature_tensor(f"{query_name}[{name!r}]", query[name])
            g = _as_feature_tensor(f"{gallery_name}[{name!r}]", gallery[name])
            if q.shape[1] != g.shape[1]:
                raise ValueError(
                    f"{query_name}[{name!r}] has dimension {q.shape[1]} but {gallery_name}[{name!r}] has {g.shape[1]}"
                )
            # One dtype per branch, so that rows gathered from both sets fit one tensor.
            common = torch.promote_types(q.dtype, g.dtype)
            self.query[name], self.gallery[name] = q.to(common), g.to(common)
        rows = {n: (self.query[n].shape[0], self.gallery[n].shape[0]) for n in self.branches}
        if len(set(rows.values())) != 1:
            raise ValueError(
                f"every feature of {query_name} and of {gallery_name} must have the same number of "
                f"rows, got (query, gallery) rows {rows}"
            )
        self.num_query, self.num_gallery = rows[self.branches[0]]
        if self.num_query < 1 or self.num_gallery < 1:
            raise ValueError(
                f"{query_name} and {gallery_name} must have at least one row each, got "
                f"{self.num_query} and {self.num_gallery}"
            )
        if device is None:
            device = self.query[self.branches[0]].device
        self.device = torch.device(device)
        for name in self.branches:
            for label, feats in ((query_name, self.query), (gallery_name, self.gallery)):
                feats[name] = feats[name].to(self.device)
                if not _all_finite(feats[name]):
                    raise ValueError(f"{label}[{name!r}] contains NaN or infinite values")
        self.query_inv = {n: inverse_norms(t) for n, t in self.query.items()}
        self.gallery_inv = {n: inverse_norms(t) for n, t in self.gallery.items()}
        for label, table in ((query_name, self.query_inv), (gallery_name, self.gallery_inv)):
            for name, inv in table.items():
                # 1 / max(|x|, eps) is 0 only where the norm overflowed: finite entries (e.g. 1e20 in float32)
                # whose squares do not fit the dtype. Their distances would be NaN or, normalised, wrong.
                overflow = (inv == 0).nonzero()
                if overflow.numel():
                    raise ValueError(
                        f"{label}[{name!r}] row {int(overflow[0, 0])} has a norm that overflows {inv.dtype}: its "
                        "cosine distances cannot be computed; scale the features down (e.g. normalise them)"
                    )
        self.dtype = compute_dtype(self.query[self.branches[0]].dtype)
        for name in self.branches:
            self.dtype = torch.promote_types(self.dtype, compute_dtype(self.query[name].dtype))
            self.dtype = torch.promote_types(self.dtype, compute_dtype(self.gallery[name].dtype))

    @property
    def num_items(self) -> int:
        return self.num_query + self.num_gallery

    def feature_names(self, branches: Sequence[str]) -> str:
        """The features of ``branches`` as the caller named them, for error messages."""
        return ", ".join(f"{self.query_name}[{b!r}] / {self.gallery_name}[{b!r}]" for b in branches)

    def check_branches(self, branches: Sequence[str], name: str = "branches") -> tuple[str, ...]:
        branches = tuple(branches)
        unknown = [b for b in branches if b not in self.branches]
        if not branches or unknown:
            raise ValueError(f"{name} must name features among {self.branches}, got {list(branches)}")
        return branches

    def _range(self, name: str, start: int, stop: int, table_q, table_g) -> torch.Tensor:
        q = self.num_query
        if stop <= q:
            return table_q[name][start:stop]
        if start >= q:
            return table_g[name][start - q : stop - q]
        return torch.cat([table_q[name][start:], table_g[name][: stop - q]])

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Features of items [start, stop) of one branch (a view unless the range spans both sets)."""
        return self._range(name, start, stop, self.query, self.gallery)

    def inv_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self._range(name, start, stop, self.query_inv, self.gallery_inv)

    def gather(self, name: str, items: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Features (or, with ``inverse``, inverse norms) of the items in the 1-D index tensor ``items``."""
        table_q, table_g = (self.query_inv, self.gallery_inv) if inverse else (self.query, self.gallery)
        in_query = items < self.num_query
        if bool(in_query.all()):
            return table_q[name].index_select(0, items)
        if not bool(in_query.any()):
            return table_g[name].index_select(0, items - self.num_query)
        out = torch.empty((items.shape[0],) + table_q[name].shape[1:], dtype=table_q[name].dtype, device=self.device)
        out[in_query] = table_q[name].index_select(0, items[in_query])
        out[~in_query] = table_g[name].index_select(0, items[~in_query] - self.num_query)
        return out

    def unit_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Features of items [start, stop) of one branch divided by their norms, in the compute dtype (a new
        tensor of the range's size; half-precision features are upcast, as a GEMM of them is slow on the CPU
        and the distances must be those of the float32 upcast)."""
        inv = self.inv_rows(name, start, stop).to(self.dtype)
        return self.rows(name, start, stop).to(self.dtype) * inv[:, None]

    def branch_block(self, name: str, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
        """Cosine distances of one branch between items rows[0]:rows[1] and cols[0]:cols[1]: 1 - the GEMM of
        the normalised rows (``unit_rows``); the evaluation's distance up to float rounding."""
        one = torch.ones((), dtype=self.dtype, device=self.device)
        return torch.addmm(one, self.unit_rows(name, *rows), self.unit_rows(name, *cols).T, alpha=-1)

    def gallery_block(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Cosine distances of one branch between queries [start, stop) and the whole gallery."""
        q = self.query[name][start:stop]
        return cosine_distance_rows(q, self.gallery[name], self.query_inv[name][start:stop], self.gallery_inv[name]).to(
            self.dtype
        )

    def pair_distances(self, branches: Sequence[str], first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """The distance of each pair (first[p], second[p]): the sum over ``branches`` of their cosine
        distances, computed from the two items' features (no distance matrix)."""
        out = torch.zeros(first.shape[0], dtype=self.dtype, device=self.device)
        for name in branches:
            width = self.query[name].shape[1]
            step = max(1, _PAIR_BLOCK_ELEMENTS // max(width, 1))
            for start in range(0, first.shape[0], step):
                a, b = first[start : start + step], second[start : start + step]
                xa = self.gather(name, a).to(self.dtype)
                xb = self.gather(name, b).to(self.dtype)
                # one batched dot product per pair, without a (pairs, D) product in between
                sim = torch.bmm(xa[:, None, :], xb[:, :, None]).view(-1)
                sim.mul_(self.gather(name, a, inverse=True).to(self.dtype))
                sim.mul_(self.gather(name, b, inverse=True).to(self.dtype))
                out[start : start + step] += sim.neg_().add_(1.0)
        return out
