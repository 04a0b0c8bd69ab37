"""The k nearest items of every item, and each row's maximum distance, from one of several backends:
what k-reciprocal re-ranking needs (``scstn_vcn.metrics.rerank``), at any gallery size.

Backends (``NeighbourSearch(backend=...)``; the default ``auto`` is ``exact`` up to 150,000 items and on
CUDA, ``faiss-ivf`` above on the CPU when faiss is installed):

* ``exact``: ``knn.nearest_neighbours``, the blocked torch pass over all N^2 distances (CPU or CUDA),
  exact, ties by index. The default, and the right choice while N^2 D multiply-adds are affordable: up
  to about 100,000 items on a CPU (MSMT17's 93,820 take minutes), any size the GPU's time allows.
* ``faiss-flat``: a faiss flat inner-product index (``IndexFlatIP``; on the GPU when faiss has GPU
  support and the features are on CUDA). Exact search with faiss's kernels; it holds the N x D float32
  vectors of a view in memory.
* ``faiss-ivf``: an inverted-file index (``IVF<nlist>,<codes>``, inner product) searched with ``nprobe``
  lists: approximate. ``codes`` is ``Flat`` (float32 vectors), ``SQ8`` (1 byte a dimension), ``SQ4`` or
  ``PQ<m>`` where the float vectors do not fit in memory. The candidates are always re-scored exactly
  from the features (which may be memory-mapped from disk), so the returned distances are the
  evaluation's own, whatever the codes.
* ``faiss``: any faiss index, named by its factory string (``factory``, faiss's own vocabulary, e.g.
  ``PCA64,HNSW32`` or ``PCA128,IVF4096,Flat``) and searched with ``params`` (faiss's ParameterSpace
  syntax, e.g. ``efSearch=128`` or ``nprobe=64``; default ``efSearch=128`` for HNSW, ``nprobe=<nprobe>``
  for IVF). It indexes the normalised vectors under the L2 metric, whose order equals the inner
  product's for unit vectors and, unlike it, is unchanged by the mean a PCA transform subtracts. Where the
  features' neighbours live in few dimensions, a PCA-reduced graph (HNSW) finds them at a recall an IVF
  over the full vectors reaches only by scanning a large part of its lists; the candidates are re-scored
  exactly all the same.

Views. A view's distance is the sum of its branches' cosine distances; that equals ``len(branches) -
<u_i, u_j>`` with u the concatenation of the branches' L2-normalised features, so one inner-product
index per view serves it. The index sees float32 normalised vectors built a block of rows at a time.

Candidates and rescoring. For each item the index returns ``k * rescore`` candidates (``rescore``
defaults to 1 for float codes, 2 for scalar- and 4 for product-quantised ones); the item itself is always
added (its distance is 0, as in the exact pass), duplicates and faiss's -1 fillers are dropped, the exact
distances of the candidates are computed from the features, and the k smallest by (distance, index) are
kept. A row with
fewer than k candidates (an IVF whose probed lists hold fewer items) is searched exactly instead.

Row maximum. Re-ranking divides each row by max_j D[i, j]^2 over all N items. The approximate backends
get it from the same index: the farthest item from u_i is the item with the largest inner product with
-u_i, so one more search (``far_k`` = 4 candidates from ``far_nprobe`` = 2 lists) with the negated
vectors finds it; its exact distance (and the largest distance among the neighbours) gives the maximum.
With ``faiss-flat`` that is exact (up to float rounding); with ``faiss-ivf`` it is a lower bound of the
true maximum (a real distance of the row), exact when the farthest item lies in the far_nprobe lists
nearest to -u_i; the measured ratio to the exact maximum is reported with the recall. It costs one more
search per item, over fewer lists than the neighbours' (the maximum only scales a row's D^, and a
slightly low one changes the weights little; the measured ratio says how little).

Recall. For the approximate backends ``find_neighbours`` measures, on ``recall_sample`` rows drawn with
a fixed seed, the recall of the k nearest (|approximate & exact| / k, against the exact neighbours of
those rows from a blocked pass over all items) and the ratio of the row maxima, and returns them with
the backend's parameters.

Memory: the exact backend as in ``knn``; faiss-flat 4 N D bytes per view; faiss-ivf N times the code
size (D bytes for SQ8, m bytes for PQm) plus 8 N for the ids, plus the candidates, O(N k rescore), and
the neighbour lists, O(N k). One view's index exists at a time.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from .faiss_index import (
    FaissMissingError,
    check_codes,
    check_factory,
    check_params,
    factory_index,
    import_faiss,
    set_params,
    train,
    train_size_for,
)
from .item_features import ItemFeatures
from .knn import Neighbours, block_size_for, merge_smallest, nearest_neighbours, order_by_value_then_index, smallest_k

BACKENDS = ("auto", "exact", "faiss-flat", "faiss-ivf", "faiss")
# "auto": the exact pass up to this many items (MSMT17's 93,820 with room), or on CUDA at any size;
# faiss-ivf above it on the CPU when faiss is installed (else exact, at its O(N^2 D) cost)
AUTO_EXACT_UP_TO = 150_000
# rows of normalised vectors handed to faiss at a time (add and search): 16,384 x 4096 x 4 B = 256 MiB at most
_ROW_BLOCK_ELEMENTS = 1 << 26
# columns per block of the exact pass for sampled rows
_EXACT_COLUMNS = 65536


def _positive_int(value, name, allow_none=False):
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def default_nlist(num_items: int) -> int:
    """About 4 sqrt(N) lists, a power of two (faiss's guideline of 4 to 16 sqrt(N)), at least 1 and at most
    N / 39 (faiss wants 39 training points a list)."""
    target = 4 * math.sqrt(max(num_items, 1))
    nlist = 1 << max(0, round(math.log2(target)))
    return max(1, min(nlist, num_items // 39))


@dataclass(frozen=True)
class NeighbourSearch:
    """How the k nearest items are found (see the module docstring).

    ``backend`` auto | exact | faiss-flat | faiss-ivf (auto: ``resolve_backend``); ``nprobe`` lists searched
    (faiss-ivf); ``nlist`` lists (None: ``default_nlist(N)``); ``codes`` the IVF's vector codes (Flat, SQ8,
    SQ4, SQfp16, PQ<m>); ``rescore`` candidates per neighbour re-scored exactly (None: ``default_rescore``);
    ``far_k`` candidates for the row maximum, from ``far_nprobe`` lists; ``train_size`` rows the IVF (or the factory's
    index) trains on (None: ``default_train_size``); ``recall_sample`` rows on which recall is measured (0: not
    measured); ``seed`` for the samples. Backend ``faiss``: ``factory`` the index's faiss factory string
    (required), ``params`` its search parameters and ``far_params`` those of the row-maximum search (faiss
    ParameterSpace syntax; None: ``search_params``'s defaults).
    """

    backend: str = "auto"
    nprobe: int = 32
    nlist: int | None = None
    codes: str = "SQ8"
    rescore: int | None = None
    far_k: int = 4
    far_nprobe: int = 2
    train_size: int | None = None
    recall_sample: int = 500
    seed: int = 0
    factory: str | None = None
    params: str | None = None
    far_params: str | None = None

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"neighbour backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        _positive_int(self.nprobe, "nprobe")
        _positive_int(self.nlist, "nlist", allow_none=True)
        check_codes(self.codes)
        _positive_int(self.rescore, "rescore", allow_none=True)
        _positive_int(self.far_k, "far_k")
        _positive_int(self.far_nprobe, "far_nprobe")
        _positive_int(self.train_size, "train_size", allow_none=True)
        if not isinstance(self.recall_sample, numbers.Integral) or self.recall_sample < 0:
            raise ValueError(f"recall_sample must be an integer >= 0, got {self.recall_sample!r}")
        check_params(self.params, "params")
        check_params(self.far_params, "far_params")
        if self.backend == "faiss":
            if self.factory is None:
                raise ValueError("backend 'faiss' needs factory, a faiss index factory string such as 'PCA64,HNSW32'")
            check_factory(self.factory)
        elif self.factory is not None:
            raise ValueError(f"factory is for backend 'faiss', not {self.backend!r}")

    def as_dict(self) -> dict:
        out = {"backend": self.backend}
        if self.backend == "faiss-ivf":
            drop = ("backend", "factory", "params", "far_params")
            out.update({k: v for k, v in asdict(self).items() if k not in drop})
        elif self.backend == "faiss":
            params, far_params = search_params(self)
            keep = ("factory", "rescore", "far_k", "train_size", "recall_sample", "seed")
            out.update({k: v for k, v in asdict(self).items() if k in keep}, params=params, far_params=far_params)
        elif self.backend == "faiss-flat":
            out.update(far_k=self.far_k, recall_sample=self.recall_sample)
        return out


def resolve_backend(search: NeighbourSearch, num_items: int, device: torch.device) -> str:
    """The backend "auto" stands for: exact up to AUTO_EXACT_UP_TO items or on CUDA, else faiss-ivf when
    faiss is installed, else exact. Other backends stand for themselves."""
    if search.backend != "auto":
        return search.backend
    if num_items <= AUTO_EXACT_UP_TO or device.type == "cuda":
        return "exact"
    try:
        import_faiss()
    except FaissMissingError:
        return "exact"
    return "faiss-ivf"


def search_params(search: NeighbourSearch) -> tuple[str, str]:
    """(params, far_params) of backend ``faiss``: the given ones, else efSearch=128 / efSearch=32 for an HNSW,
    nprobe=<nprobe> / nprobe=<far_nprobe> for an IVF, none for others."""
    factory = search.factory or ""
    if "HNSW" in factory:
        defaults = ("efSearch=128", "efSearch=32")
    elif "IVF" in factory:
        defaults = (f"nprobe={search.nprobe}", f"nprobe={search.far_nprobe}")
    else:
        defaults = ("", "")
    return search.params or defaults[0], search.far_params or defaults[1]


def default_rescore(search: NeighbourSearch) -> int:
    """Candidates per neighbour: 1 for float vectors, 2 for scalar-quantised codes (SQ8 keeps the order but
    for near-ties) and for any factory's index (a PCA's distances are approximate), 4 for product-quantised
    codes (coarser)."""
    if search.backend == "faiss":
        return 4 if "PQ" in search.factory else 2
    if search.backend == "faiss-flat" or search.codes in ("Flat", "SQfp16"):
        return 1
    return 4 if search.codes.startswith("PQ") else 2


def view_vectors(items: ItemFeatures, branches: Sequence[str], start: int, stop: int) -> np.ndarray:
    """(stop - start, sum D) float32: the concatenated L2-normalised branch features of items [start, stop)
    (a zero row stays zero, as the cosine distance's eps convention treats it)."""
    parts = [items.rows(b, start, stop).float() * items.inv_rows(b, start, stop).float()[:, None] for b in branches]
    return torch.cat(parts, 1).cpu().numpy()


def _row_step(items: ItemFeatures, branches) -> int:
    width = sum(items.query[b].shape[1] for b in branches)
    return max(1, _ROW_BLOCK_ELEMENTS // width)


def exact_rows(items: ItemFeatures, branches: Sequence[str], rows: torch.Tensor, k: int):
    """Exact (distance, index) of the k nearest items of the items ``rows`` (ordered by (distance, index),
    ties by index as the exact pass) and their row maxima of D^2, from a blocked pass over all items."""
    n, dev, dtype = items.num_items, items.device, items.dtype
    rows = rows.to(dev)
    k = min(k, n)
    values = torch.full((rows.shape[0], k), float("inf"), dtype=dtype, device=dev)
    index = torch.full((rows.shape[0], k), n, dtype=torch.int64, device=dev)
    sq_max = torch.zeros(rows.shape[0], dtype=dtype, device=dev)
    heads = {
        b: items.gather(b, rows).to(dtype) * items.gather(b, rows, inverse=True).to(dtype)[:, None] for b in branches
    }
    q = items.num_query
    starts = sorted(set(range(0, q, _EXACT_COLUMNS)) | set(range(q, n, _EXACT_COLUMNS)))
    for start, stop in zip(starts, starts[1:] + [n]):
        block = None
        for b in branches:
            part = heads[b] @ items.rows(b, start, stop).to(dtype).T
            part.mul_(items.inv_rows(b, start, stop).to(dtype)[None, :]).neg_().add_(1.0)
            block = part if block is None else block.add_(part)
        peak = torch.maximum(block.amax(dim=1), block.amin(dim=1).neg_())
        torch.maximum(sq_max, peak * peak, out=sq_max)
        top, where = smallest_k(block, k)
        values, index = merge_smallest(values, index, top, where + start, k)
    return values, index, sq_max


def _exact_candidates(items, branches, rows: torch.Tensor, cand: torch.Tensor, k: int):
    """The k nearest of each row among its candidates (n = padding), by exact distance, ties by index."""
    n = items.num_items
    cand = cand.sort(1).values
    valid = cand < n
    valid[:, 1:] &= cand[:, 1:] != cand[:, :-1]  # drop duplicates
    owner = rows[:, None].expand_as(cand)
    dist = torch.full(cand.shape, float("inf"), dtype=items.dtype, device=cand.device)
    dist[valid] = items.pair_distances(branches, owner[valid], cand[valid]).to(items.dtype)
    cand = cand.masked_fill(~valid, n)
    dist, cand = order_by_value_then_index(dist, cand)
    return dist[:, :k], cand[:, :k], valid.sum(1)


class _FaissView:
    """One view's faiss index over all N items (normalised, concatenated branch vectors)."""

    def __init__(self, items: ItemFeatures, branches, search: NeighbourSearch):
        faiss = import_faiss()
        faiss.omp_set_num_threads(torch.get_num_threads())  # the process's thread setting, as torch's
        self.faiss, self.items, self.branches = faiss, items, branches
        n = items.num_items
        width = sum(items.query[b].shape[1] for b in branches)
        self.step = _row_step(items, branches)
        self.params = self.far_params = None
        if search.backend == "faiss-flat":
            index = faiss.IndexFlatIP(width)
            self.nlist = None
        elif search.backend == "faiss":
            index = factory_index(search.factory, width, f"the view {'+'.join(branches)}")
            self.nlist = None
            self.params, self.far_params = search_params(search)
        else:
            self.nlist = min(search.nlist or default_nlist(n), n)
            codes = search.codes
            if codes.startswith("PQ") and width % int(codes[2:]):
                raise ValueError(f"codes {codes}: m = {codes[2:]} must divide the view's dimension {width}")
            index = faiss.index_factory(width, f"IVF{self.nlist},{codes}", faiss.METRIC_INNER_PRODUCT)
        if items.device.type == "cuda" and hasattr(faiss, "StandardGpuResources"):
            self.gpu_resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self.gpu_resources, items.device.index or 0, index)
        if not index.is_trained:
            train_size = train_size_for(index, n, width, search.train_size, self.nlist)
            rng = np.random.default_rng(search.seed)
            sample = np.sort(rng.choice(n, size=train_size, replace=False))
            vectors = np.concatenate(
                [self._vectors_of(sample[s : s + self.step]) for s in range(0, train_size, self.step)]
            )
            train(index, vectors, search.factory or type(index).__name__, f"the view {'+'.join(branches)}")
            del vectors
        for start in range(0, n, self.step):
            index.add(view_vectors(items, branches, start, min(start + self.step, n)))
        if self.nlist is not None:
            faiss.extract_index_ivf(index).nprobe = min(search.nprobe, self.nlist)
        self.index = index

    def _vectors_of(self, rows: np.ndarray) -> np.ndarray:
        idx = torch.from_numpy(rows).to(self.items.device)
        parts = []
        for b in self.branches:
            x = self.items.gather(b, idx).float()
            parts.append(x * self.items.gather(b, idx, inverse=True).float()[:, None])
        return torch.cat(parts, 1).cpu().numpy()

    def search(self, start: int, stop: int, k: int, negate: bool = False, nprobe: int | None = None) -> torch.Tensor:
        x = view_vectors(self.items, self.branches, start, stop)
        if negate:
            np.negative(x, out=x)
        params = self.far_params if negate else self.params
        if params:
            set_params(self.index, params, "far_params" if negate else "params")
            _, ids = self.index.search(x, k)
        elif nprobe is not None and self.nlist is not None:
            ivf = self.faiss.extract_index_ivf(self.index)
            before, ivf.nprobe = ivf.nprobe, min(nprobe, self.nlist)
            try:
                _, ids = self.index.search(x, k)
            finally:
                ivf.nprobe = before
        else:
            _, ids = self.index.search(x, k)
        ids = torch.from_numpy(ids).to(self.items.device)
        return ids.masked_fill_(ids < 0, self.items.num_items)


def faiss_neighbours(items: ItemFeatures, branches, k: int, search: NeighbourSearch) -> Neighbours:
    """The view's k nearest items and row maxima from a faiss index (module docstring)."""
    n, dev = items.num_items, items.device
    k = min(k, n)
    view = _FaissView(items, branches, search)
    rescore = search.rescore or default_rescore(search)
    fetch = min(n, k * rescore)
    values = torch.empty((n, k), dtype=items.dtype, device=dev)
    index = torch.empty((n, k), dtype=torch.int64, device=dev)
    sq_max = torch.empty(n, dtype=items.dtype, device=dev)
    short = []
    step = min(view.step, 8192)
    for start in range(0, n, step):
        stop = min(start + step, n)
        rows = torch.arange(start, stop, device=dev)
        cand = torch.cat([rows[:, None], view.search(start, stop, fetch)], 1)
        dist, cand, found = _exact_candidates(items, branches, rows, cand, k)
        values[start:stop], index[start:stop] = dist, cand
        short.append(rows[found < k])
        far = view.search(start, stop, min(n, search.far_k), negate=True, nprobe=search.far_nprobe)
        far_dist, _, _ = _exact_candidates(items, branches, rows, far, far.shape[1])
        far_dist = far_dist.masked_fill(torch.isinf(far_dist), 0.0)
        peak = torch.maximum(far_dist.amax(1), dist.masked_fill(torch.isinf(dist), 0.0).amax(1))
        sq_max[start:stop] = peak * peak
    del view
    short = torch.cat(short)
    for first in range(0, short.numel(), 1024):
        # too few candidates in the probed lists: these rows are searched exactly (in groups: each group's
        # features and (group, block) distances are in memory)
        part = short[first : first + 1024]
        values[part], index[part], sq_max[part] = exact_rows(items, branches, part, k)
    return Neighbours(index=index, distance=values, sq_max=sq_max)


def measure_recall(items: ItemFeatures, branches, found: Neighbours, sample: int, seed: int = 0) -> dict:
    """Recall of ``found`` against exact neighbours on ``sample`` rows (fixed seed), and the ratio of the
    found row maxima to the exact ones."""
    n = items.num_items
    k = found.index.shape[1]
    rng = np.random.default_rng(seed)
    rows = torch.from_numpy(np.sort(rng.choice(n, size=min(sample, n), replace=False))).to(items.device)
    _, exact_index, exact_sq_max = exact_rows(items, branches, rows, k)
    approx = found.index[rows].sort(1).values
    hits = torch.zeros(rows.shape[0], dtype=torch.int64, device=items.device)
    for column in range(k):
        probe = exact_index[:, column : column + 1].contiguous()
        pos = torch.searchsorted(approx, probe).clamp_max_(k - 1)
        hits += (approx.gather(1, pos) == probe).flatten().long()
    recall = hits.double() / k
    ratio = (found.sq_max[rows].double() / exact_sq_max.double().clamp_min(1e-30)).sqrt()
    return {
        "rows": int(rows.shape[0]),
        f"recall_at_{k}": float(recall.mean()),
        "recall_min": float(recall.min()),
        "row_max_ratio_mean": float(ratio.mean()),
        "row_max_ratio_min": float(ratio.min()),
    }


def find_neighbours(
    items: ItemFeatures,
    views: Mapping[str, Sequence[str]],
    k: int,
    search: NeighbourSearch | None = None,
    chunk_size: int = 512,
) -> tuple[dict[str, Neighbours], dict]:
    """({view: Neighbours}, report): every item's k nearest items per view by the ``search`` backend,
    and a report of the backend's settings, time and, for the faiss backends with ``recall_sample`` > 0,
    the measured recall of each view."""
    search = search or NeighbourSearch()
    if not isinstance(search, NeighbourSearch):
        raise TypeError(f"search must be a NeighbourSearch or None, got {type(search).__name__}")
    k = _positive_int(k, "k")
    requested = search.backend
    search = replace(search, backend=resolve_backend(search, items.num_items, items.device))
    report = search.as_dict()
    if requested != search.backend:
        report["requested"] = requested
    begin = time.perf_counter()
    if search.backend == "exact":
        found = nearest_neighbours(items, views, k, block_size_for(int(chunk_size), items.num_items))
    else:
        import_faiss()  # the one clear error before any work
        found, report["views"] = {}, {}
        for name, branches in views.items():
            branches = items.check_branches(branches, f"views[{name!r}]")
            found[name] = faiss_neighbours(items, branches, k, search)
            if search.recall_sample:
                measured = time.perf_counter()
                report["views"][name] = measure_recall(items, branches, found[name], search.recall_sample, search.seed)
                report["views"][name]["recall_seconds"] = round(time.perf_counter() - measured, 3)
                begin += time.perf_counter() - measured  # the search's own time below
    report["seconds"] = round(time.perf_counter() - begin, 3)
    return found, report
