"""Dense numpy references for k-reciprocal re-ranking and alpha-query expansion: the definitions written
out line by line on full N x N matrices (N = queries + gallery), the straightforward way. They are the
tests' reference for scstn_vcn.metrics.rerank / query_expansion and the baseline of
benchmarks/rerank_scale.py. Written from the definitions in the issue (and the paper), not from the
package's code.
"""

import numpy as np


def normalised(x):
    """Rows divided by their norm, clamped at 1e-12 (as the evaluation's cosine distance)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_distance_dense(x):
    """1 - cos between all rows of x."""
    x_hat = normalised(x)
    return 1.0 - x_hat @ x_hat.T


def all_distances(query_feats, gallery_feats):
    """The (q + g) x (q + g) distance over [query; gallery]: the sum of the features' cosine distances."""
    total = None
    for name in query_feats:
        d = cosine_distance_dense(np.concatenate([np.asarray(query_feats[name]), np.asarray(gallery_feats[name])]))
        total = d if total is None else total + d
    return total


def reciprocal_neighbours(rank, i, k):
    """R(i, k): the j among i's k + 1 nearest that have i among their k + 1 nearest."""
    forward = rank[i, : k + 1]
    backward = rank[forward, : k + 1]
    return forward[(backward == i).any(axis=1)]


def k_reciprocal_dense(dist, num_query, k1=20, k2=6, lambda_value=0.3):
    """Re-ranked (num_query, N - num_query) distances from the full (N, N) distance matrix ``dist``."""
    dist = np.asarray(dist)
    n = dist.shape[0]
    squared = dist * dist
    row_max = squared.max(axis=1)
    row_max[row_max == 0] = 1
    d_hat = squared / row_max[:, None]
    del squared
    rank = np.argsort(dist, axis=1, kind="stable")  # ties by index
    half = int(np.around(k1 / 2.0))
    v = np.zeros_like(dist)
    for i in range(n):
        r_i = reciprocal_neighbours(rank, i, k1)
        members = [r_i]
        for c in r_i:
            r_c = reciprocal_neighbours(rank, c, half)
            if len(np.intersect1d(r_c, r_i)) > 2.0 / 3.0 * len(r_c):
                members.append(r_c)
        members = np.unique(np.concatenate(members))
        weight = np.exp(-d_hat[i, members])
        v[i, members] = weight / weight.sum()
    if k2 > 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i] = v[rank[i, :k2]].mean(axis=0)
        v = v_qe
        del v_qe
    del rank
    gallery_v = v[num_query:]
    jaccard = np.ones((num_query, n - num_query), dtype=dist.dtype)
    for i in range(num_query):
        support = np.flatnonzero(v[i])
        m = np.minimum(v[i, support][None, :], gallery_v[:, support]).sum(axis=1)
        jaccard[i] = 1 - m / (2 - m)
    return jaccard * (1 - lambda_value) + d_hat[:num_query, num_query:] * lambda_value


def alpha_query_expansion_dense(query, gallery, qe_k=10, alpha=3.0, qe_times=1):
    """Each item's feature -> (1 / K) sum over its K = qe_k nearest (by cosine, ties by index) of
    max(cos, 0)^alpha times their feature; ``qe_times`` rounds. Returns (query, gallery)."""
    x = np.concatenate([np.asarray(query), np.asarray(gallery)])
    k = min(qe_k, x.shape[0])
    for _ in range(qe_times):
        dist = cosine_distance_dense(x)
        nearest = np.argsort(dist, axis=1, kind="stable")[:, :k]
        weight = np.maximum(1.0 - np.take_along_axis(dist, nearest, axis=1), 0.0) ** alpha
        x = (x[nearest] * weight[:, :, None].astype(x.dtype)).sum(axis=1) / k
    return x[: len(query)], x[len(query) :]
