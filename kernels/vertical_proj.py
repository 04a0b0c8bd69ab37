r"""Triton kernels of vertical_proj: the VCN's per-channel vertical projection (Eq. 7).

Math (see scstn_vcn/ops/vertical_proj.py), for F (B, C, H) and delta (C, K, H):

    f[b, c, k]      = \sum_h F[b, c, h] delta[c, k, h]
    dF[b, c, h]     = \sum_k g[b, c, k] delta[c, k, h]
    ddelta[c, k, h] = \sum_b g[b, c, k] F[b, c, h]        (b in increasing order, in splits)

Design. Every kernel indexes F, delta and f in their natural contiguous layouts with a 3-D tile
[BLOCK_C, BLOCK_K, BLOCK_H] (no permute or copy): the forward and dF reduce the tile over h resp. k;
one program per (channel block, image) for f, per (channel block, h chunk, image) for dF. ddelta is a
reduction over the batch: the batch is cut into S consecutive splits (S chosen so that the grid fills
the GPU while the S partial sums stay a fraction of F's traffic), one program per (channel block,
h chunk, split) walks its images in increasing b, and a second kernel adds the S partials in split
order. Both orders are fixed, so ddelta is deterministic without atomics (S = 1 writes ddelta
directly). Long H is covered by chunks of BLOCK_H, large K by chunks of BLOCK_K. Low precision F is
computed in float32 (delta arrives in the compute dtype). Channel, kernel and height indices are int32;
pointer offsets are int64. Blocks that grow with C and H run on grid axis 0, the batch (or the split)
on axis 1; every launch runs on the device of F (device_context).
"""

import torch
import triton
import triton.language as tl

from scstn_vcn.kernels._common import acc_dtype, checked_grid, device_context, num_warps_for, pow2, require_int32_index


@triton.jit
def _vertical_proj_fwd_kernel(
    F_ptr,
    delta_ptr,
    f_ptr,
    C,
    K,
    H,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(1).to(tl.int64)
    c_ok = c < C
    row = b * C + c  # int64 rows of F and f
    c3 = c.to(tl.int64)[:, None, None]
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        acc = tl.zeros([BLOCK_C, BLOCK_K], dtype=ACC)
        for h0 in range(0, H, BLOCK_H):
            h = h0 + tl.arange(0, BLOCK_H)
            h_ok = h < H
            Fv = tl.load(F_ptr + row[:, None] * H + h[None, :], mask=c_ok[:, None] & h_ok[None, :], other=0.0).to(ACC)
            d = tl.load(
                delta_ptr + (c3 * K + k[None, :, None]) * H + h[None, None, :],
                mask=c_ok[:, None, None] & k_ok[None, :, None] & h_ok[None, None, :],
                other=0.0,
            ).to(ACC)
            acc += tl.sum(Fv[:, None, :] * d, axis=2)
        tl.store(
            f_ptr + row[:, None] * K + k[None, :], acc.to(f_ptr.dtype.element_ty), mask=c_ok[:, None] & k_ok[None, :]
        )


@triton.jit
def _vertical_proj_dF_kernel(
    g_ptr,
    delta_ptr,
    dF_ptr,
    C,
    K,
    H,
    n_hblocks,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    # axis 0 enumerates (channel block, h chunk) pairs, h chunks fastest
    cb = tl.program_id(0) // n_hblocks
    hb = tl.program_id(0) - cb * n_hblocks
    b = tl.program_id(1).to(tl.int64)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    c_ok = c < C
    h_ok = h < H
    row = b * C + c
    c3 = c.to(tl.int64)[:, None, None]
    acc = tl.zeros([BLOCK_C, BLOCK_H], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        g = tl.load(g_ptr + row[:, None] * K + k[None, :], mask=c_ok[:, None] & k_ok[None, :], other=0.0).to(ACC)
        d = tl.load(
            delta_ptr + (c3 * K + k[None, :, None]) * H + h[None, None, :],
            mask=c_ok[:, None, None] & k_ok[None, :, None] & h_ok[None, None, :],
            other=0.0,
        ).to(ACC)
        acc += tl.sum(g[:, :, None] * d, axis=1)
    tl.store(
        dF_ptr + row[:, None] * H + h[None, :], acc.to(dF_ptr.dtype.element_ty), mask=c_ok[:, None] & h_ok[None, :]
    )


@triton.jit
def _vertical_proj_ddelta_kernel(
    g_ptr,
    F_ptr,
    partial_ptr,
    B,
    C,
    K,
    H,
    n_hblocks,
    per_split,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """partial[split, c, k, h] = sum over the split's images b (increasing) of g[b, c, k] F[b, c, h]."""
    cb = tl.program_id(0) // n_hblocks
    hb = tl.program_id(0) - cb * n_hblocks
    split = tl.program_id(1)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    c_ok = c < C
    h_ok = h < H
    c64 = c.to(tl.int64)
    b_first = split * per_split
    b_end = tl.minimum(b_first + per_split, B)
    out = partial_ptr + split.to(tl.int64) * C * K * H
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        acc = tl.zeros([BLOCK_C, BLOCK_K, BLOCK_H], dtype=ACC)
        row = b_first.to(tl.int64) * C + c64  # rows b C + c of g and F, b = b_first first
        for _ in range(b_first, b_end):  # increasing b: a fixed order, deterministic
            g = tl.load(g_ptr + row[:, None] * K + k[None, :], mask=c_ok[:, None] & k_ok[None, :], other=0.0).to(ACC)
            Fv = tl.load(F_ptr + row[:, None] * H + h[None, :], mask=c_ok[:, None] & h_ok[None, :], other=0.0).to(ACC)
            acc += g[:, :, None] * Fv[:, None, :]
            row += C
        tl.store(
            out + (c64[:, None, None] * K + k[None, :, None]) * H + h[None, None, :],
            acc.to(partial_ptr.dtype.element_ty),
            mask=c_ok[:, None, None] & k_ok[None, :, None] & h_ok[None, None, :],
        )


@triton.jit
def _ddelta_reduce_kernel(partial_ptr, ddelta_ptr, n, n_splits, ACC: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    acc = tl.zeros([BLOCK], dtype=ACC)
    src = partial_ptr + i
    for _ in range(0, n_splits):  # split order: deterministic
        acc += tl.load(src, mask=ok, other=0.0)
        src += n
    tl.store(ddelta_ptr + i, acc.to(ddelta_ptr.dtype.element_ty), mask=ok)


def _blocks(C, K, H):
    # Paper shapes: K = 6 (-> 8), H = 24 or 48 (-> 32, 64): 2048-value tiles of 8 or 4 channels, about
    # 115 registers a thread at 8 warps without spills on sm_90; B C / 8 programs = 24576 at B = 96.
    block_k = pow2(K, lo=1, hi=8)
    block_h = pow2(H, lo=2, hi=64)
    block_c = pow2(C, lo=1, hi=max(1, 2048 // (block_k * block_h)))
    return block_c, block_k, block_h


def _forward_blocks(C, K, H, dtype):
    # The forward's tile: float64 takes half the channels of _blocks (1024 values, 4 or 2 channels at the
    # paper shapes): its 2048-value (O) tile spilled 12 bytes at 64 registers under triton 3.6.
    block_c, block_k, block_h = _blocks(C, K, H)
    return (max(1, block_c // 2) if dtype == torch.float64 else block_c), block_k, block_h


def _ddelta_blocks(C, K, H):
    # smaller channel blocks than the other kernels, so that C / block programs per split are many
    block_c, block_k, block_h = _blocks(C, K, H)
    return min(block_c, 8), block_k, block_h


# ddelta's split of the batch: about this many programs fill an H100 (132 SMs) a few times over ...
_DDELTA_PROGRAMS = 1024
# ... and each split covers at least this many images, so the S partials (S C K H values, written
# and read once) stay well below F's B C H values (at K = 6: at most 6/16 of them).
_DDELTA_MIN_IMAGES = 16
_REDUCE_BLOCK = 1024


def ddelta_splits(B, C, K, H):
    """(number of splits, images per split) of ddelta's batch reduction."""
    block_c, _, block_h = _ddelta_blocks(C, K, H)
    base = triton.cdiv(C, block_c) * triton.cdiv(H, block_h)
    wanted = min(triton.cdiv(_DDELTA_PROGRAMS, base), max(1, B // _DDELTA_MIN_IMAGES))
    per_split = triton.cdiv(B, max(1, wanted))
    return triton.cdiv(B, per_split), per_split


def forward_grid(B, C, K, H, dtype=torch.float32):
    block_c, _, _ = _forward_blocks(C, K, H, dtype)
    return checked_grid((triton.cdiv(C, block_c), B), "vertical_proj forward")


def backward_grids(B, C, K, H):
    """Grids of dF, of ddelta's split sums and of their reduction (None when there is one split)."""
    block_c, _, block_h = _blocks(C, K, H)
    dblock_c, _, _ = _ddelta_blocks(C, K, H)
    n_splits, _ = ddelta_splits(B, C, K, H)
    dF = checked_grid((triton.cdiv(C, block_c) * triton.cdiv(H, block_h), B), "vertical_proj backward (dF)")
    ddelta = checked_grid(
        (triton.cdiv(C, dblock_c) * triton.cdiv(H, block_h), n_splits), "vertical_proj backward (ddelta)"
    )
    reduce = (
        None
        if n_splits == 1
        else checked_grid((triton.cdiv(C * K * H, _REDUCE_BLOCK),), "vertical_proj backward (ddelta reduction)")
    )
    return dF, ddelta, reduce


def _check_indices(C, K, H):
    for size, what in ((C, "C (channels of F)"), (K, "K (kernels of delta)"), (H, "H (height of F)")):
        require_int32_index(size, 1024, f"vertical_proj: {what}")


def vertical_proj_forward(F, delta):
    B, C, H = F.shape
    K = delta.shape[1]
    _check_indices(C, K, H)
    F = F.contiguous()
    delta = delta.contiguous()
    f = torch.empty((B, C, K), device=F.device, dtype=F.dtype)
    block_c, block_k, block_h = _forward_blocks(C, K, H, F.dtype)
    with device_context(F):
        _vertical_proj_fwd_kernel[forward_grid(B, C, K, H, F.dtype)](
            F,
            delta,
            f,
            C,
            K,
            H,
            ACC=acc_dtype(F.dtype),
            BLOCK_C=block_c,
            BLOCK_K=block_k,
            BLOCK_H=block_h,
            num_warps=num_warps_for(block_c * block_k * block_h),
        )
    return f


def vertical_proj_backward(grad_f, F, delta):
    B, C, H = F.shape
    K = delta.shape[1]
    _check_indices(C, K, H)
    grad_f = grad_f.contiguous()
    F = F.contiguous()
    delta = delta.contiguous()
    ACC = acc_dtype(F.dtype)
    block_c, block_k, block_h = _blocks(C, K, H)
    dblock_c, _, _ = _ddelta_blocks(C, K, H)
    n_splits, per_split = ddelta_splits(B, C, K, H)
    dF_grid, ddelta_grid, reduce_grid = backward_grids(B, C, K, H)
    n_hblocks = triton.cdiv(H, block_h)
    dF = torch.empty((B, C, H), device=F.device, dtype=F.dtype)
    ddelta = torch.empty((C, K, H), device=F.device, dtype=delta.dtype)
    partial = ddelta if n_splits == 1 else torch.empty((n_splits, C, K, H), device=F.device, dtype=delta.dtype)
    with device_context(F):
        _vertical_proj_dF_kernel[dF_grid](
            grad_f,
            delta,
            dF,
            C,
            K,
            H,
            n_hblocks,
            ACC=ACC,
            BLOCK_C=block_c,
            BLOCK_K=block_k,
            BLOCK_H=block_h,
            num_warps=num_warps_for(block_c * block_k * block_h),
        )
        _vertical_proj_ddelta_kernel[ddelta_grid](
            grad_f,
            F,
            partial,
            B,
            C,
            K,
            H,
            n_hblocks,
            per_split,
            ACC=ACC,
            BLOCK_C=dblock_c,
            BLOCK_K=block_k,
            BLOCK_H=block_h,
            num_warps=num_warps_for(dblock_c * block_k * block_h),
        )
        if reduce_grid is not None:
            _ddelta_reduce_kernel[reduce_grid](
                partial, ddelta, C * K * H, n_splits, ACC=ACC, BLOCK=_REDUCE_BLOCK, num_warps=4
            )
    return dF, ddelta
