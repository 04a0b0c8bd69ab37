"""alpha-weighted average query expansion (alpha-QE; Radenovic et al., "Fine-tuning CNN Image Retrieval
with No Human Annotation", TPAMI 2019), as fast-reid offers it for re-identification (``aqe``: qe_k = 10,
alpha = 3, ``qe_times`` rounds), over the queries and the gallery together, without an N x N matrix.

One round, for every item i of the N = q + g items (queries then gallery) and each feature separately:

    s_ij = cos(x_i, x_j) = 1 - d_cos(x_i, x_j)
    n_1 .. n_K = the K = qe_k items nearest to i (i itself included; ties by the lower index)
    x_i' = (1 / K) sum_p max(s_{i n_p}, 0)^alpha x_{n_p}

The features are the raw ones, weighted (not normalised first), as fast-reid does; the evaluation's
cosine distance normalises them anyway. A negative similarity weighs 0 (fast-reid raises it to the
power alpha, which is undefined for a fractional alpha and pulls the feature away from a neighbour
for an odd one; only items nearly orthogonal to all their qe_k nearest have such a neighbour).
``qe_times`` rounds repeat this on the expanded features.

The neighbours come from ``knn.nearest_neighbours`` (blocks of about chunk_size * N distances); the new
features are written a chunk of rows at a time, so the extra memory is one copy of the features (the
expanded ones; the old ones are still read), the neighbour lists (N x K), the blocks and a chunk's
gathered neighbours (block_size x K x D).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch

from .item_features import ItemFeatures
from .knn import block_size_for, nearest_neighbours

# Rows of new features computed at once: at most block_size, and fewer where their gathered neighbours
# would pass 2^24 elements (64 MiB in float32).
_GATHER_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class QueryExpansionConfig:
    """alpha-QE settings: ``qe_k`` nearest items (>= 1, the item itself included), weight exponent
    ``alpha`` (>= 0; 0 is plain average query expansion) and ``qe_times`` rounds (>= 1)."""

    qe_k: int = 10
    alpha: float = 3.0
    qe_times: int = 1

    def __post_init__(self):
        for name in ("qe_k", "qe_times"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha < float("inf"):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        object.__setattr__(self, "alpha", float(alpha))

    def as_dict(self) -> dict:
        return asdict(self)

    def check_items(self, num_query: int, num_gallery: int) -> None:
        """Raise a ValueError naming qe_k unless the data has at least qe_k items (queries + gallery): the
        qe_k nearest are taken among all of them, the item itself included."""
        if self.qe_k > num_query + num_gallery:
            raise ValueError(
                f"query expansion qe_k = {self.qe_k} must be at most the number of items = "
                f"{num_query + num_gallery} ({num_query} queries + {num_gallery} gallery items): each item is "
                "expanded by its qe_k nearest items, itself included"
            )


def _expand_once(items: ItemFeatures, qe_k: int, alpha: float, block_size: int) -> tuple[dict, dict]:
    new_query, new_gallery = {}, {}
    n, q = items.num_items, items.num_query
    for name in items.branches:
        nbrs = nearest_neighbours(items, {name: (name,)}, qe_k, block_size_for(block_size, n))[name]
        k = nbrs.index.shape[1]
        weight = (1.0 - nbrs.distance).clamp_min_(0.0).pow_(alpha)
        width = items.query[name].shape[1]
        out = torch.empty(n, width, dtype=items.dtype, device=items.device)
        step = max(1, min(block_size, _GATHER_ELEMENTS // max(k * width, 1)))
        for start in range(0, n, step):
            stop = min(start + step, n)
            feats = items.gather(name, nbrs.index[start:stop].flatten()).to(items.dtype).view(stop - start, k, width)
            # (1 / K) sum_p w_p x_p, as a batched (1, K) x (K, D) product per row
            out[start:stop] = torch.bmm(weight[start:stop, None, :], feats)[:, 0].div_(k)
        new_query[name], new_gallery[name] = out[:q], out[q:]
    return new_query, new_gallery


@torch.no_grad()
def alpha_query_expansion(
    query, gallery, config: QueryExpansionConfig | None = None, *, chunk_size: int = 512, device=None
):
    """Expanded (query, gallery) features (see the module docstring).

    ``query`` (q, D) and ``gallery`` (g, D) are tensors or numpy arrays, or dicts of features with the
    same names (each feature is expanded by its own neighbours); query and gallery features of different
    dtypes are promoted to one (``torch.promote_types``). The result has the same form, in the compute
    dtype (float32, float64 if any feature is float64) on ``device`` (default: the features').
    ``config.qe_k`` must be at most q + g.
    ``config`` defaults to ``QueryExpansionConfig()``; memory beyond the new features is
    O(chunk_size * (q + g)) for the distance blocks, and chunk_size rows' neighbours are gathered at once.
    """
    config = QueryExpansionConfig() if config is None else config
    if not isinstance(config, QueryExpansionConfig):
        raise TypeError(f"config must be a QueryExpansionConfig, got {type(config).__name__}")
    if not isinstance(chunk_size, numbers.Integral) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if isinstance(query, Mapping) != isinstance(gallery, Mapping):
        raise TypeError("query and gallery must both be tensors or both be dicts of features")
    single = not isinstance(query, Mapping)
    if single:
        query, gallery = {"feature": query}, {"feature": gallery}
    items = ItemFeatures(query, gallery, device, query_name="query", gallery_name="gallery")
    config.check_items(items.num_query, items.num_gallery)
    for round_ in range(config.qe_times):
        query, gallery = _expand_once(items, config.qe_k, config.alpha, int(chunk_size))
        if round_ + 1 < config.qe_times:
            items = ItemFeatures(query, gallery, items.device, query_name="query", gallery_name="gallery")
    if single:
        return query["feature"], gallery["feature"]
    return query, gallery
