"""faiss, as both users of it here need it (the re-ranking neighbours of ``neighbours`` and the searchable
gallery of ``gallery_index``): importing it with one clear error when it is missing, checking a factory
string and search parameters (faiss's own vocabulary: ``PCA64,HNSW32``, ``IVF4096,SQ8``; ``efSearch=128``,
``nprobe=32``), building and training a factory's index with errors that name what did not fit, and
setting parameters on it.

Training rows: an IVF's k-means gets ``default_train_size`` rows (64 a list, at most 1 GiB of vectors but
faiss's minimum of 39 a list); an index without lists whose transform trains (a PCA) gets up to 1 GiB.
"""

from __future__ import annotations

import numpy as np

FAISS_INSTALL = (
    'faiss is not installed: `pip install "scstn-vcn[faiss]"` (faiss-cpu) or, for GPUs, the faiss-gpu package '
    "of your CUDA version (conda install -c pytorch faiss-gpu)"
)
# dimension a factory string is test-built at: divisible by the usual PCA / PQ / OPQ sizes
_PROBE_DIM = 3840
# float32 elements of training vectors an index without lists gets (1 GiB)
_TRAIN_ELEMENTS = 1 << 28


class FaissMissingError(ImportError):
    pass


def import_faiss():
    """The faiss module, or FaissMissingError saying how to install it."""
    try:
        import faiss
    except ImportError as error:
        raise FaissMissingError(FAISS_INSTALL) from error
    return faiss


def _last_line(error: Exception) -> str:
    """faiss's C++ exceptions carry a stack of context lines; the last one says what went wrong."""
    return str(error).strip().splitlines()[-1]


def check_codes(codes: str) -> str:
    """faiss's code names for an IVF index: Flat, SQ8, SQ4, SQfp16, PQ<m> (m divides the dimension)."""
    if codes in ("Flat", "SQ8", "SQ4", "SQfp16") or (codes.startswith("PQ") and codes[2:].isdigit()):
        return codes
    raise ValueError(f"codes must be Flat, SQ8, SQ4, SQfp16 or PQ<m> (faiss's names), got {codes!r}")


def default_train_size(num_items: int, nlist: int, width: int) -> int:
    """Rows an IVF's k-means trains on: 64 a list, but no more than 1 GiB of float32 vectors unless faiss's
    minimum of 39 a list needs more; at most the number of items."""
    return min(num_items, 64 * nlist, max(39 * nlist, _TRAIN_ELEMENTS // max(width, 1)))


def check_factory(factory) -> str:
    """A faiss factory string (faiss.index_factory parses it: ValueError naming it if it does not)."""
    if not isinstance(factory, str) or not factory.strip():
        raise ValueError(f"factory must be a faiss index factory string such as 'PCA64,HNSW32', got {factory!r}")
    faiss = import_faiss()
    try:
        faiss.index_factory(_PROBE_DIM, factory, faiss.METRIC_L2)
    except RuntimeError as error:
        raise ValueError(
            f"factory {factory!r} is not an index factory string faiss can build: {_last_line(error)}"
        ) from None
    return factory


def check_params(params, name: str = "params"):
    """faiss ParameterSpace settings "name=value[,name=value]" (None: the backend's defaults)."""
    if params is None:
        return None

    def valid(part):
        key, _, value = part.partition("=")
        try:
            float(value)
        except ValueError:
            return False
        return bool(key.strip())

    if not isinstance(params, str) or not all(valid(part) for part in params.split(",")):
        raise ValueError(
            f"{name} must be faiss parameters such as 'efSearch=128' or 'nprobe=16,efSearch=64', got {params!r}"
        )
    return params


def ivf_lists(index) -> int | None:
    """The lists of the IVF inside a factory's index; None for an index without one."""
    try:
        return import_faiss().extract_index_ivf(index).nlist
    except RuntimeError:
        return None


def factory_index(factory: str, width: int, what: str, metric: str = "l2"):
    """faiss.index_factory(width, factory) under the L2 or inner-product metric, or ValueError naming
    ``what`` (the vectors it was to hold) and their width."""
    faiss = import_faiss()
    code = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    try:
        return faiss.index_factory(width, factory, code)
    except RuntimeError as error:
        raise ValueError(
            f"factory {factory!r} does not fit {what} of {width} dimensions: {_last_line(error)}"
        ) from None


def train_size_for(index, num_items: int, width: int, train_size: int | None = None, lists: int | None = None) -> int:
    """Rows to train ``index`` on: ``train_size`` if given, else ``default_train_size`` for an index with
    lists (``lists``, else those faiss finds in a CPU index) and 1 GiB of vectors for one without; at most
    ``num_items``."""
    if train_size:
        return min(num_items, train_size)
    lists = lists or ivf_lists(index)
    return default_train_size(num_items, lists, width) if lists else min(num_items, _TRAIN_ELEMENTS // width)


def train(index, vectors: np.ndarray, factory: str, what: str) -> None:
    """index.train(vectors), or ValueError naming the factory, ``what`` and the training rows."""
    try:
        index.train(vectors)
    except RuntimeError as error:  # e.g. a PCA wider than the vectors, or more lists than training rows
        raise ValueError(
            f"the faiss index {factory} cannot be trained on {what} ({vectors.shape[1]} dimensions, "
            f"{vectors.shape[0]} training rows): {_last_line(error)}"
        ) from None


def set_params(index, params: str | None, name: str = "params") -> None:
    """faiss.ParameterSpace settings ``params`` on ``index`` (nothing for None or ""), or ValueError naming
    ``name`` when one does not apply to the index."""
    if not params:
        return
    try:
        import_faiss().ParameterSpace().set_index_parameters(index, params)
    except RuntimeError:
        raise ValueError(
            f"{name} {params!r} do not apply to the index {type(index).__name__}: faiss could not set them"
        ) from None
