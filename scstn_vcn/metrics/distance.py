"""Cosine distance between feature sets.

    d_cos(a, b) = 1 - <a, b> / (max(|a|, eps) * max(|b|, eps)),  eps = 1e-12

so the distance lies in [0, 2]; a zero vector is at distance 1 from everything (the same eps
convention as ``torch.nn.functional.normalize``).

The streaming evaluator and ``cosine_distance`` share ``cosine_distance_rows`` so that a
full distance matrix and one computed in query chunks round the same way.
"""

from __future__ import annotations

import numpy as np
import torch

EPS = 1e-12

# On the CPU half-precision matmuls are slow or unsupported, so low-precision gallery
# features are upcast to float32 in blocks of this many rows: 4096 x 12,288 x 4 bytes = 192 MiB,
# which keeps the upcast copy bounded instead of duplicating the whole gallery.
_CPU_UPCAST_BLOCK = 4096


def _as_feature_tensor(name: str, x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (num_items, dim), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    return x


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype distances are returned in: float64 stays float64, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def inverse_norms(x: torch.Tensor) -> torch.Tensor:
    """1 / max(|x_i|, eps) per row, in the compute dtype (norms of fp16 rows are taken in fp32)."""
    dtype = compute_dtype(x.dtype)
    if x.dtype == dtype:
        return 1.0 / torch.linalg.vector_norm(x, dim=1).clamp_min(EPS)
    # Upcast in blocks of rows: a float32 copy of a whole (e.g. memory-mapped) half-precision gallery
    # would take twice its size in memory.
    norms = torch.empty(x.shape[0], dtype=dtype, device=x.device)
    for start in range(0, x.shape[0], _CPU_UPCAST_BLOCK):
        norms[start : start + _CPU_UPCAST_BLOCK] = torch.linalg.vector_norm(
            x[start : start + _CPU_UPCAST_BLOCK].to(dtype), dim=1
        )
    return 1.0 / norms.clamp_min(EPS)


def cosine_distance_rows(
    q: torch.Tensor, g: torch.Tensor, q_inv: torch.Tensor, g_inv: torch.Tensor, upcast: bool = False
) -> torch.Tensor:
    """Cosine distances (len(q), len(g)) given precomputed inverse norms.

    The gallery is never normalised as a whole (that would copy it); the product is scaled
    by the gallery's inverse norms afterwards instead. A float16 / bfloat16 gallery is multiplied
    in its own precision on the GPU, unless ``upcast``: then, as always on the CPU, in blocks
    converted to the compute dtype (the distances of the float32 upcast).
    """
    out_dtype = compute_dtype(torch.promote_types(q.dtype, g.dtype))
    # The (small) query block is normalised before the product, so a float16 matmul only ever
    # sees |<q_hat, g>| <= |g| and cannot overflow float16's 65504 through the query's norm.
    q_hat = q.to(out_dtype) * q_inv.to(out_dtype)[:, None]
    low_precision = g.dtype in (torch.float16, torch.bfloat16)
    if low_precision and (upcast or q.device.type == "cpu"):
        sim = torch.empty(q.shape[0], g.shape[0], dtype=out_dtype, device=q.device)
        for start in range(0, g.shape[0], _CPU_UPCAST_BLOCK):
            block = g[start : start + _CPU_UPCAST_BLOCK].to(out_dtype)
            torch.matmul(q_hat, block.T, out=sim[:, start : start + block.shape[0]])
    elif low_precision:
        # On the GPU fp16/bf16 matmuls accumulate in fp32; only the result is upcast.
        sim = torch.matmul(q_hat.to(g.dtype), g.T).to(out_dtype)
    else:
        sim = torch.matmul(q_hat, g.to(out_dtype).T)
    sim.mul_(g_inv.to(out_dtype)[None, :])
    # 1 - sim, in place to avoid a second (len(q), len(g)) buffer.
    return sim.neg_().add_(1.0)


def cosine_distance(a, b) -> torch.Tensor:
    """Cosine distance matrix ``1 - cos(a_i, b_j)`` of shape (len(a), len(b)).

    ``a`` (N, D) and ``b`` (M, D) are tensors or numpy arrays on the same device. The result
    is float64 when either input is float64, float32 otherwise.
    """
    a = _as_feature_tensor("a", a)
    b = _as_feature_tensor("b", b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same feature dimension, got a: {a.shape[1]} and b: {b.shape[1]}")
    if a.device != b.device:
        raise ValueError(f"a and b must be on the same device, got a: {a.device} and b: {b.device}")
    return cosine_distance_rows(a, b, inverse_norms(a), inverse_norms(b))
