"""Ranking metrics on a full query x gallery distance matrix (the reference implementation).

Protocol (Market-1501 / torchreid "market1501" evaluation, single query, no re-ranking):

* The gallery is ranked per query by ascending distance with a *stable* sort, so ties are
  broken by gallery index (lower index first).
* For query q, gallery images with the same identity AND the same camera as q are discarded,
  and gallery images with the junk identity -1 are discarded for every query. Ranks below
  are 1-based positions among the kept images.
* A query with no kept gallery image of its identity ("no valid match") is skipped; the
  metrics are averaged over the remaining, valid queries. It is an error if none is valid.

Definitions for a valid query with positives at kept ranks r_1 < r_2 < ... < r_n:

* CMC(k) = 1 if r_1 <= k else 0; the reported CMC curve is its mean over valid queries.
* AP = (1/n) * sum_j j / r_j  (precision at each positive, averaged); mAP = mean AP.
* INP = n / r_n, the fraction of the list a user must inspect that is relevant when the hardest
  positive is found (Ye et al., "Deep Learning for Person Re-identification: A Survey and
  Outlook", TPAMI 2021); mINP = mean INP.

Values are fractions in [0, 1], not percentages.

Short galleries: where fewer than ``max_rank`` gallery images are kept for a query, its CMC
is padded with its last value (which is 1, since a valid query has a positive among them).
The curve is therefore always of length ``max_rank``; torchreid instead clips ``max_rank`` to
the gallery size, and both agree on the ranks they share.
"""

from __future__ import annotations

import numpy as np
import torch

JUNK_PID = -1


def check_dist_chunk(dist_chunk, num_gallery: int) -> int:
    """The number of query rows of a (B, num_gallery) chunk of distances; ValueError otherwise."""
    if dist_chunk.dim() != 2 or dist_chunk.shape[1] != num_gallery:
        raise ValueError(
            f"dist_chunk must have shape (B, {num_gallery}) (one column per gallery item), "
            f"got {tuple(dist_chunk.shape)}"
        )
    return dist_chunk.shape[0]


def as_1d_array(name: str, x, length: int | None = None, length_of: str | None = None) -> np.ndarray:
    """``x`` (sequence, numpy array or tensor) as a 1-D int64 numpy array of the expected length."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold integer ids, got dtype {arr.dtype} with non-integer values")
    if length is not None and arr.shape[0] != length:
        raise ValueError(f"{name} has length {arr.shape[0]} but {length_of} has {length}")
    return arr.astype(np.int64, copy=False)


def check_max_rank(max_rank) -> int:
    if not isinstance(max_rank, (int, np.integer)) or isinstance(max_rank, bool) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
    return int(max_rank)


def _as_distmat(distmat) -> np.ndarray:
    if isinstance(distmat, torch.Tensor):
        distmat = distmat.detach().cpu().numpy()
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {distmat.shape}")
    return distmat


def no_valid_query_error() -> ValueError:
    return ValueError(
        "no query has a valid match in the gallery (every query's identity is absent from the gallery, "
        "junk (-1), or only seen by the query's own camera); check q_pids/g_pids and q_camids/g_camids"
    )


def evaluate_rank_full(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50) -> dict:
    """CMC, mAP and mINP of a (num_query, num_gallery) distance matrix under the protocol above.

    Returns ``{"cmc": float64 array (max_rank,), "mAP": float, "mINP": float,
    "num_valid_queries": int}``. Raises ValueError naming the argument on inconsistent
    inputs, and when no query has a valid match.
    """
    distmat = _as_distmat(distmat)
    num_q, num_g = distmat.shape
    q_pids = as_1d_array("q_pids", q_pids, num_q, "distmat's rows")
    q_camids = as_1d_array("q_camids", q_camids, num_q, "distmat's rows")
    g_pids = as_1d_array("g_pids", g_pids, num_g, "distmat's columns")
    g_camids = as_1d_array("g_camids", g_camids, num_g, "distmat's columns")
    max_rank = check_max_rank(max_rank)

    cmc_sum = np.zeros(max_rank, dtype=np.float64)
    ap_sum = 0.0
    inp_sum = 0.0
    num_valid = 0
    not_junk = g_pids != JUNK_PID
    for i in range(num_q):
        order = np.argsort(distmat[i], kind="stable")
        same_pid = g_pids[order] == q_pids[i]
        keep = not_junk[order] & ~(same_pid & (g_camids[order] == q_camids[i]))
        matches = same_pid[keep]
        if not matches.any():
            continue
        num_valid += 1
        ranks = np.flatnonzero(matches) + 1  # 1-based kept ranks of the positives, ascending
        n = ranks.size
        ap_sum += float(np.mean(np.arange(1, n + 1) / ranks))
        inp_sum += float(n / ranks[-1])
        # CMC(k) is 1 from the first positive's rank on; beyond the kept list it stays 1 (padding).
        if ranks[0] <= max_rank:
            cmc_sum[ranks[0] - 1 :] += 1.0
    if num_valid == 0:
        raise no_valid_query_error()
    return {
        "cmc": cmc_sum / num_valid,
        "mAP": ap_sum / num_valid,
        "mINP": inp_sum / num_valid,
        "num_valid_queries": num_valid,
    }


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50):
    """torchreid-compatible ``(cmc, mAP)``: ``cmc`` a float array of length ``max_rank``
    averaged over valid queries, ``mAP`` a float; see the module docstring for the protocol,
    and ``evaluate_rank_full`` for mINP too."""
    result = evaluate_rank_full(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank)
    return result["cmc"], result["mAP"]


def valid_query_mask(q_pids, g_pids, q_camids, g_camids) -> np.ndarray:
    """Which queries have a valid match under the protocol above: a gallery image of their identity, not
    junk, from another camera. Boolean (num_query,), from the identities and cameras alone (no distances),
    so that an evaluation can say "valid queries: N of M" before it computes anything."""
    q_pids = as_1d_array("q_pids", q_pids)
    q_camids = as_1d_array("q_camids", q_camids, q_pids.shape[0], "q_pids")
    g_pids = as_1d_array("g_pids", g_pids)
    g_camids = as_1d_array("g_camids", g_camids, g_pids.shape[0], "g_pids")
    kept = g_pids != JUNK_PID
    cameras: dict[int, set[int]] = {}
    for pid, camid in zip(g_pids[kept].tolist(), g_camids[kept].tolist()):
        cameras.setdefault(pid, set()).add(camid)
    return np.array(
        [
            len(cameras.get(pid, ())) - (camid in cameras.get(pid, ())) > 0
            for pid, camid in zip(q_pids.tolist(), q_camids.tolist())
        ],
        dtype=bool,
    )
