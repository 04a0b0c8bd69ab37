"""A searchable gallery of any size: a faiss inner-product index over feature folders
(scstn_vcn.metrics.feature_store), saved in faiss's own file format with a JSON file beside it.

    gallery.index        faiss.write_index of the index (flat, graph, IVF, any factory's; nothing pickled)
    gallery.index.json   format, version, the view (branches whose cosine distances are summed), the
                         faiss factory string, its metric and search parameters, and the feature folders
                         whose items the index holds, in order (path, number of items, the items' digest)

The index holds u = the concatenation of the view's L2-normalised branch features, so the inner product
<u_q, u_g> = len(view) - (the sum of the branches' cosine distances): the evaluation's distance, and
|u_q - u_g|^2 = 2 <u_q, u_g>'s complement, the same order. The flat and IVF indexes use the inner product;
the graph and any other faiss factory string (``factory``) use the L2 metric, because a transform such as
a PCA subtracts a mean, which changes inner products' order but not distances'. Search
takes ``k * rescore`` candidates from the index and re-scores them exactly from the features on disk
(memory-mapped: only the candidates' rows are read), so the returned distances and order are the
evaluation's, whatever the codes. Item t of the index is row t - offset of the folder that holds it;
paths, identities and cameras come from the folders.

Defaults (``index_factory_for``): up to 50,000 items a flat index (exact, 4 D bytes an item); above, a
graph (``hnsw``): ``PCA64,HNSW32`` (``HNSW32`` for views narrower than 256 dimensions) searched with
efSearch 128, about 4 x 64 + 8.5 x 32 = 530 bytes an item, and 4x candidates re-scored exactly. A trained
network's features have few intrinsic dimensions (about 21 principal components of 2,048 hold 90% of the
variance), so 64 components keep the near neighbours and the graph finds them: at 2,362,447 items with
2 threads, 1.7 ms a query at recall@10 0.99, where ``IVF8192,SQ8`` (``ivf``; nlist about 4 sqrt(N), a power
of two, nprobe 32, one byte a dimension) took 52 ms for recall 0.74 in four times the memory
(benchmarks/gallery_search.py; README "Large galleries" has the figures).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import torch

from .faiss_index import (
    check_factory,
    check_params,
    factory_index,
    import_faiss,
    ivf_lists,
    set_params,
    train,
    train_size_for,
)
from .feature_store import FeatureSet, FeatureStoreError, open_features, write_json_atomically
from .neighbours import default_nlist

FORMAT = "scstn-vcn-index"
VERSION = 1
FLAT_UP_TO = 50_000
KINDS = ("auto", "flat", "hnsw", "ivf")
# views at least this wide are reduced to 64 principal components before the graph
GRAPH_PCA_FROM = 256
DEFAULT_PARAMS = {"hnsw": "efSearch=128"}
DEFAULT_NPROBE = 32
DEFAULT_RESCORE = 4
# rows normalised and added to the index at a time
_ADD_ROWS = 16384
# candidate feature elements re-scored at a time (2^25 float64 = 256 MiB)
_RESCORE_ELEMENTS = 1 << 25


def index_kind(num_items: int, kind: str = "auto") -> str:
    """flat, hnsw or ivf: ``kind``, or for auto flat up to FLAT_UP_TO items and hnsw above."""
    if kind not in KINDS:
        raise ValueError(f"index type must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "auto":
        return "flat" if num_items <= FLAT_UP_TO else "hnsw"
    return kind


def index_factory_for(
    num_items: int, kind: str = "auto", nlist: int | None = None, codes: str | None = None, width: int = 2048
) -> str:
    """faiss factory string of index type ``kind`` (``index_kind``) over ``num_items`` vectors of ``width``
    dimensions: "Flat", "PCA64,HNSW32" ("HNSW32" below GRAPH_PCA_FROM dimensions) or "IVF<nlist>,<codes>"
    (``nlist`` default ``default_nlist``, ``codes`` default SQ8; both only for ivf)."""
    kind = index_kind(num_items, kind)
    if kind != "ivf" and (nlist is not None or codes is not None):
        raise ValueError(f"nlist and codes are for an ivf index, not {kind} (give type ivf)")
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return "PCA64,HNSW32" if width >= GRAPH_PCA_FROM else "HNSW32"
    return f"IVF{nlist or default_nlist(num_items)},{codes or 'SQ8'}"


def _no_lists(factory: str) -> str:
    return (
        f"nprobe is for an index with inverted lists; {factory} has none "
        "(set its own search parameters, e.g. params efSearch=128 for an HNSW)"
    )


def normalised_view(feats: dict, view: Sequence[str], start: int, stop: int) -> np.ndarray:
    """(stop - start, sum D) float32: the view's branches of rows [start, stop), each L2-normalised
    (eps 1e-12, as the cosine distance), concatenated."""
    parts = []
    for name in view:
        x = torch.from_numpy(np.asarray(feats[name][start:stop], dtype=np.float32))
        parts.append(x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12))
    return torch.cat(parts, 1).numpy()


class GalleryIndex:
    """A faiss index over the items of one or more feature folders (module docstring)."""

    def __init__(self, index, meta: dict, folders: list[FeatureSet]):
        self.index, self.meta, self.folders = index, meta, folders
        self.view = list(meta["view"])
        self.offsets = np.cumsum([0] + [f.num_items for f in folders])
        self._paths = {}  # folder number -> its paths.txt, read on the first metadata() of the folder

    # ------------------------------------------------------------------------------ building

    @classmethod
    def build(
        cls, folder, view: Sequence[str] | None = None, kind="auto", nlist=None, codes=None, factory=None, **options
    ):
        """An index over the feature folder ``folder``: the view (default every branch), in the index
        ``index_factory_for(N, kind, nlist, codes, width)`` or, given ``factory``, that faiss factory string
        (L2; module docstring), trained (if it needs training) on up to ``train_size`` rows (default
        ``faiss_index.train_size_for``) drawn with ``seed``. Options ``nprobe`` (IVF) and ``params`` (faiss
        ParameterSpace settings; default efSearch=128 for the hnsw type) are the index's defaults for search."""
        features = open_features(folder, view)
        view = list(view or features.branches)
        dims = {name: int(features.feats[name].shape[1]) for name in view}
        width = sum(dims.values())
        what = f"the view {'+'.join(view)} of {folder}"
        params = check_params(options.get("params"))
        if factory is None:
            kind = index_kind(features.num_items, kind)
            factory = index_factory_for(features.num_items, kind, nlist, codes, width)
            metric = "l2" if kind == "hnsw" else "inner_product"
            params = params or DEFAULT_PARAMS.get(kind)
        else:
            if kind != "auto" or nlist is not None or codes is not None:
                raise ValueError("factory names the whole index: give it without kind, nlist or codes")
            check_factory(factory)
            metric = "l2"
        index = factory_index(factory, width, what, metric)
        lists = ivf_lists(index)
        if options.get("nprobe") is not None and lists is None and factory != "Flat":
            raise ValueError(_no_lists(factory))  # before the build, not after it
        if lists is not None and lists > features.num_items:
            raise ValueError(f"nlist {lists} is larger than the number of items {features.num_items}")
        if not index.is_trained:
            size = train_size_for(index, features.num_items, width, options.get("train_size"))
            rng = np.random.default_rng(options.get("seed", 0))
            rows = np.sort(rng.choice(features.num_items, size=size, replace=False))
            sample = {name: features.feats[name][rows] for name in view}
            train(index, normalised_view(sample, view, 0, size), factory, what)
            del sample
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "view": view,
            "dims": dims,
            "factory": factory,
            "metric": metric,
            "num_items": 0,
            "folders": [],
        }
        out = cls(index, meta, [])
        if lists is not None:
            out.set_nprobe(options.get("nprobe") or DEFAULT_NPROBE)
        out.set_params(params)
        out.add(features)
        return out

    def add(self, features: FeatureSet | str) -> None:
        """Append the items of a feature folder (same branches and dimensions as the index)."""
        if not isinstance(features, FeatureSet):
            features = open_features(features, self.view)
        for name, dim in self.meta["dims"].items():
            if name not in features.feats or features.feats[name].shape[1] != dim:
                found = {b: int(f.shape[1]) for b, f in features.feats.items()}
                raise FeatureStoreError(
                    f"{features.folder}: features {found} do not fit the index, built for {self.meta['dims']}"
                )
        for start in range(0, features.num_items, _ADD_ROWS):
            self.index.add(
                normalised_view(features.feats, self.view, start, min(start + _ADD_ROWS, features.num_items))
            )
        self.folders.append(features)
        self.offsets = np.cumsum([0] + [f.num_items for f in self.folders])
        self.meta["num_items"] = int(self.offsets[-1])
        self.meta["folders"].append(
            {
                "path": os.path.abspath(features.folder),
                "num_items": features.num_items,
                "items_sha256": features.manifest.get("items_sha256"),
            }
        )

    # ------------------------------------------------------------------------------ files

    def save(self, path: str) -> None:
        """``path`` (faiss's format) then ``path + ".json"``, each through a temporary name and a rename."""
        faiss = import_faiss()
        index = self.index
        if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
            index = faiss.index_gpu_to_cpu(index)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        try:
            faiss.write_index(index, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        meta = dict(self.meta, index_bytes=os.path.getsize(path), ntotal=int(index.ntotal))
        write_json_atomically(path + ".json", meta)

    @classmethod
    def load(cls, path: str, mmap: bool = False) -> GalleryIndex:
        """The index saved at ``path`` with its JSON; the folders it names are opened (memory-mapped) and
        checked against it. ``mmap`` maps the index file instead of reading it (IVF lists stay on disk)."""
        faiss = import_faiss()
        meta_path = path + ".json"
        if not os.path.isfile(path):
            raise FeatureStoreError(f"{path}: no such index file")
        try:
            with open(meta_path, encoding="utf-8") as handle:
                meta = json.load(handle)
        except FileNotFoundError:
            raise FeatureStoreError(f"{meta_path}: no such file (the index's metadata, written beside it)") from None
        except json.JSONDecodeError as error:
            raise FeatureStoreError(f"{meta_path}: not valid JSON: {error}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise FeatureStoreError(f"{meta_path}: not a {FORMAT} version {VERSION} file")
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(path, flags)
        except RuntimeError as error:
            raise FeatureStoreError(f"{path}: faiss cannot read it: {str(error).strip().splitlines()[-1]}") from None
        if index.ntotal != meta["num_items"] or index.d != sum(meta["dims"].values()):
            raise FeatureStoreError(
                f"{path}: holds {index.ntotal} vectors of dimension {index.d}, but {meta_path} describes "
                f"{meta['num_items']} of dimension {sum(meta['dims'].values())} (an index of other features?)"
            )
        folders = []
        for entry in meta["folders"]:
            features = open_features(entry["path"], meta["view"])
            if (
                features.num_items != entry["num_items"]
                or features.manifest.get("items_sha256") != entry["items_sha256"]
            ):
                raise FeatureStoreError(
                    f"{entry['path']}: not the features the index {path} was built from (other items; "
                    "rebuild the index)"
                )
            folders.append(features)
        out = cls(index, meta, folders)
        if meta.get("nprobe"):
            out.set_nprobe(meta["nprobe"])
        out.set_params(meta.get("params"))
        return out

    # ------------------------------------------------------------------------------ search

    @property
    def num_items(self) -> int:
        return int(self.offsets[-1])

    def set_nprobe(self, nprobe: int) -> None:
        """Lists an IVF searches (at most its nlist), kept in the metadata as the index's default. A flat
        index has nothing to probe; an index without lists (a graph) refuses it."""
        if not isinstance(nprobe, int) or isinstance(nprobe, bool) or nprobe < 1:
            raise ValueError(f"nprobe must be a positive integer, got {nprobe!r}")
        if self.meta["factory"] == "Flat":
            return
        lists = ivf_lists(self.index)
        if lists is None:
            raise ValueError(_no_lists(self.meta["factory"]))
        import_faiss().extract_index_ivf(self.index).nprobe = min(nprobe, lists)
        self.meta["nprobe"] = nprobe

    def set_params(self, params: str | None) -> None:
        """faiss ParameterSpace settings (e.g. ``efSearch=128``, ``nprobe=64``), kept in the metadata as the
        index's defaults; None leaves them as they are."""
        if params is None:
            return
        check_params(params)
        set_params(self.index, params)
        self.meta["params"] = params

    def rows(self, name: str, items: np.ndarray) -> np.ndarray:
        """Features of branch ``name`` of index items ``items`` (1-D), read from their folders."""
        out = np.empty((items.shape[0], self.meta["dims"][name]), dtype=np.float32)
        which = np.searchsorted(self.offsets, items, side="right") - 1
        for f in np.unique(which):
            mask = which == f
            local = items[mask] - self.offsets[f]
            order = np.argsort(local)  # ascending rows: sequential reads of the memory map
            out[np.flatnonzero(mask)[order]] = self.folders[f].feats[name][local[order]]
        return out

    def metadata(self, item: int) -> tuple[str, int, int]:
        """(path, pid, camid) of index item ``item``."""
        f = int(np.searchsorted(self.offsets, item, side="right") - 1)
        local = item - int(self.offsets[f])
        folder = self.folders[f]
        if f not in self._paths:
            self._paths[f] = folder.paths
        return self._paths[f][local], int(folder.pids[local]), int(folder.camids[local])

    def search(self, query: dict, k: int, rescore: int = DEFAULT_RESCORE) -> tuple[np.ndarray, np.ndarray]:
        """(distance, item) arrays (Q, k) of the k nearest index items of each query, by the view's summed
        cosine distance re-scored from the features, nearest first (ties by item); ``query`` maps the
        view's branches to (Q, D) arrays. Items past the index's size are -1 with distance inf."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        for name, dim in self.meta["dims"].items():
            x = query.get(name) if isinstance(query, dict) else None
            if x is None or np.ndim(x) != 2 or np.shape(x)[1] != dim:
                raise ValueError(
                    f"the query features must give {name!r} of dimension {dim} (the index's view "
                    f"{self.view}), got {None if x is None else np.shape(x)}"
                )
        fetch = min(self.num_items, k * (1 if self.meta["factory"] == "Flat" else max(1, rescore)))
        count = np.shape(query[self.view[0]])[0]
        # queries in blocks: a block's candidates' features (block x fetch x D float64) are in memory
        step = max(1, _RESCORE_ELEMENTS // (fetch * sum(self.meta["dims"].values())))
        parts = [
            self._search_block({n: np.asarray(query[n][s : s + step]) for n in self.view}, k, fetch)
            for s in range(0, count, step)
        ]
        if not parts:
            return np.zeros((0, k)), np.zeros((0, k), dtype=np.int64)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _search_block(self, query: dict, k: int, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        q = normalised_view(query, self.view, 0, query[self.view[0]].shape[0])
        _, cand = self.index.search(q, fetch)
        valid = cand >= 0
        sim = np.zeros(cand.shape, dtype=np.float64)
        flat = cand[valid]
        owner = np.nonzero(valid)[0]
        for name in self.view:
            # in float64 from the raw features, both sides: the candidates' exact distances
            g = self.rows(name, flat).astype(np.float64)
            g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
            qn = np.asarray(query[name], dtype=np.float64)
            qn = qn / np.maximum(np.linalg.norm(qn, axis=1, keepdims=True), 1e-12)
            sim[valid] += np.einsum("pd,pd->p", qn[owner], g)
        dist = np.where(valid, len(self.view) - sim, np.inf)
        ids = np.where(valid, cand, np.iinfo(np.int64).max)
        order = np.lexsort((ids, dist), axis=1)[:, :k]
        dist = np.take_along_axis(dist, order, 1)
        ids = np.take_along_axis(ids, order, 1)
        ids[~np.isfinite(dist)] = -1
        return dist, ids
