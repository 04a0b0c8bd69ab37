r"""Triton kernels of channel_pool: channel mean + GAP+GMP from one read of x.

Math (see scstn_vcn/ops/channel_pool.py), for x of shape (B, C, H, W):

    cmean[b, h, w] = (1 / C) * \sum_c x[b, c, h, w]
    gpool[b, c]    = (1 / (H W)) * \sum_{h,w} x[b, c, h, w] + \max_{h,w} x[b, c, h, w]
    argmax[b, c]   = the smallest flat index h W + w at which the maximum is reached
    dx[b, c, h, w] = g_m[b, h, w] / C + g_p[b, c] / (H W) + g_p[b, c] [h W + w == argmax[b, c]]

Forward design. One program owns a block of BLOCK_C channels of one image and walks over the H W
positions in chunks of BLOCK_P; each element of x is loaded exactly once. Per channel it keeps the
running sum, the running max and its first index (a later chunk replaces the max only when strictly
greater, so the lowest index wins ties, as torch.max on the CPU). The channel sums of its chunk are the
program's partial of cmean: they go to a float32/float64 buffer partial[b, channel_block, h w], and a
second kernel adds the channel blocks in a fixed order. No atomics, so cmean is bitwise reproducible.
The partial buffer costs 4 / (BLOCK_C * itemsize) of x's traffic (about 3 % for fp32 at BLOCK_C = 32).

Backward design. dx is a pure elementwise map of (g_m, g_p, argmax): one program per
(image, channel block, position chunk) writes its tile of dx once, contiguous.

x may have any strides; they are passed to the kernels (no copy). Channel and position indices are int32
(C and H W below 2^31, checked by the launchers) and only the pointer offsets are widened to int64, so
the index arithmetic stays cheap. Channel blocks run on grid axis 0 and the batch on axis 1 (axes 1
and 2 are limited to 65,535 programs); every launch runs on the device of x (device_context).
NaN inputs: the sums, hence the outputs, are NaN as in eager, but the max ignores NaN, so argmax (and
the max's gradient) may point at a different element than torch.max, which returns the NaN's index.
"""

import torch
import triton
import triton.language as tl

from scstn_vcn.kernels._common import (
    acc_dtype,
    checked_grid,
    device_context,
    num_warps_for,
    pow2,
    require_int32_index,
    torch_acc_dtype,
)


@triton.jit
def _channel_pool_fwd_kernel(
    x_ptr,
    partial_ptr,
    gpool_ptr,
    argmax_ptr,
    C,
    HW,
    W,
    n_cblocks,
    s_b,
    s_c,
    s_h,
    s_w,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    cb = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    row = x_ptr + b * s_b + c.to(tl.int64) * s_c  # [BLOCK_C] row bases
    total = tl.zeros([BLOCK_C], dtype=ACC)
    best = tl.full([BLOCK_C], float("-inf"), dtype=ACC)
    best_idx = tl.zeros([BLOCK_C], dtype=tl.int32)
    partial_row = partial_ptr + (b * n_cblocks + cb) * HW
    for p0 in range(0, HW, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_ok = p < HW
        h = p // W
        w = p - h * W
        mask = c_ok[:, None] & p_ok[None, :]
        offs = h.to(tl.int64) * s_h + w.to(tl.int64) * s_w
        v = tl.load(row[:, None] + offs[None, :], mask=mask, other=0.0).to(ACC)
        total += tl.sum(v, axis=1)
        tl.store(partial_row + p, tl.sum(v, axis=0), mask=p_ok)
        vm = tl.where(mask, v, float("-inf"))
        chunk_max = tl.max(vm, axis=1)
        # first index of the chunk's max; positions past HW never qualify
        cand = tl.where((vm == chunk_max[:, None]) & mask, p[None, :], 2147483647)
        chunk_idx = tl.min(cand, axis=1)
        better = chunk_max > best
        best_idx = tl.where(better, chunk_idx, best_idx)
        best = tl.where(better, chunk_max, best)
    # all -inf row: torch.max reports index 0
    result = total / HW + best
    tl.store(gpool_ptr + b * C + c, result.to(gpool_ptr.dtype.element_ty), mask=c_ok)
    tl.store(argmax_ptr + b * C + c, best_idx, mask=c_ok)


@triton.jit
def _channel_mean_reduce_kernel(partial_ptr, cmean_ptr, C, HW, n_cblocks, ACC: tl.constexpr, BLOCK_P: tl.constexpr):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    b = tl.program_id(1).to(tl.int64)
    p_ok = p < HW
    acc = tl.zeros([BLOCK_P], dtype=ACC)
    base = partial_ptr + b * n_cblocks * HW + p
    for j in range(0, n_cblocks):  # fixed order: deterministic
        acc += tl.load(base + j * HW, mask=p_ok, other=0.0)
    tl.store(cmean_ptr + b * HW + p, (acc / C).to(cmean_ptr.dtype.element_ty), mask=p_ok)


@triton.jit
def _channel_pool_bwd_kernel(
    gm_ptr,
    gp_ptr,
    argmax_ptr,
    dx_ptr,
    C,
    HW,
    n_pblocks,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # axis 0 enumerates (channel block, position block) pairs, position blocks fastest
    cb = tl.program_id(0) // n_pblocks
    pb = tl.program_id(0) - cb * n_pblocks
    b = tl.program_id(1).to(tl.int64)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    c_ok = c < C
    p_ok = p < HW
    row = b * C + c  # int64: B C rows of HW values can pass 2^31 elements
    gp = tl.load(gp_ptr + row, mask=c_ok, other=0.0).to(ACC)
    am = tl.load(argmax_ptr + row, mask=c_ok, other=-1)
    gm = tl.load(gm_ptr + b * HW + p, mask=p_ok, other=0.0).to(ACC)
    dx = gm[None, :] / C + (gp / HW)[:, None]
    dx += tl.where(p[None, :] == am[:, None], gp[:, None], 0.0)
    mask = c_ok[:, None] & p_ok[None, :]
    tl.store(dx_ptr + row[:, None] * HW + p[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _forward_blocks(C, HW, dtype=torch.float32):
    # Paper shapes: HW = 192 (O) or 768 (M) -> chunks of 64 positions (256 contiguous bytes of a fp32
    # row, no masked lanes) times 32 channels: a 2048-value tile (64 registers a thread at 8 warps), and
    # the cmean partials cost 1/32 of x's traffic in fp32. C / 32 * B = 6144 programs at B = 96.
    # float64 halves the tile: at 2048 values its forward spilled (128 registers + 8 bytes of stack on
    # sm_90); at 1024 it does not.
    block_p = pow2(HW, lo=16, hi=64)
    tile = 1024 if dtype == torch.float64 else 2048
    block_c = pow2(C, lo=1, hi=max(1, tile // block_p))
    return block_c, block_p


def _reduce_block(HW):
    return pow2(HW, lo=16, hi=1024)


def _backward_blocks(C, HW):
    # elementwise: 4096-value tiles, whole rows of H W positions at the paper shapes (no spills in
    # float64 either: 123 registers on sm_90)
    block_p = pow2(HW, lo=16, hi=256)
    block_c = pow2(C, lo=1, hi=max(1, 4096 // block_p))
    return block_c, block_p


def forward_grids(B, C, H, W, dtype=torch.float32):
    """Grids of the forward's two kernels (channel blocks resp. position blocks on axis 0, B on axis 1)."""
    HW = H * W
    block_c, _ = _forward_blocks(C, HW, dtype)
    return (
        checked_grid((triton.cdiv(C, block_c), B), "channel_pool forward"),
        checked_grid((triton.cdiv(HW, _reduce_block(HW)), B), "channel_pool forward (channel mean)"),
    )


def backward_grid(B, C, H, W):
    HW = H * W
    block_c, block_p = _backward_blocks(C, HW)
    return checked_grid((triton.cdiv(C, block_c) * triton.cdiv(HW, block_p), B), "channel_pool backward")


def _check_indices(C, HW):
    require_int32_index(C, 1024, "channel_pool: C (channels of x)")
    require_int32_index(HW, 1024, "channel_pool: H * W (positions of x)")


def channel_pool_forward(x):
    B, C, H, W = x.shape
    HW = H * W
    _check_indices(C, HW)
    block_c, block_p = _forward_blocks(C, HW, x.dtype)
    pool_grid, reduce_grid = forward_grids(B, C, H, W, x.dtype)
    n_cblocks = pool_grid[0]
    acc = torch_acc_dtype(x.dtype)
    partial = torch.empty((B, n_cblocks, HW), device=x.device, dtype=acc)
    gpool = torch.empty((B, C), device=x.device, dtype=x.dtype)
    argmax = torch.empty((B, C), device=x.device, dtype=torch.int32)
    cmean = torch.empty((B, H, W), device=x.device, dtype=x.dtype)
    with device_context(x):
        _channel_pool_fwd_kernel[pool_grid](
            x,
            partial,
            gpool,
            argmax,
            C,
            HW,
            W,
            n_cblocks,
            *x.stride(),
            ACC=acc_dtype(x.dtype),
            BLOCK_C=block_c,
            BLOCK_P=block_p,
            num_warps=num_warps_for(block_c * block_p),
        )
        _channel_mean_reduce_kernel[reduce_grid](
            partial, cmean, C, HW, n_cblocks, ACC=acc_dtype(x.dtype), BLOCK_P=_reduce_block(HW), num_warps=4
        )
    return cmean, gpool, argmax


def channel_pool_backward(grad_cmean, grad_gpool, argmax, x):
    B, C, H, W = x.shape
    HW = H * W
    _check_indices(C, HW)
    grad_cmean = grad_cmean.contiguous()
    grad_gpool = grad_gpool.contiguous()
    argmax = argmax.contiguous()
    dx = torch.empty((B, C, H, W), device=x.device, dtype=x.dtype)
    block_c, block_p = _backward_blocks(C, HW)
    with device_context(x):
        _channel_pool_bwd_kernel[backward_grid(B, C, H, W)](
            grad_cmean,
            grad_gpool,
            argmax,
            dx,
            C,
            HW,
            triton.cdiv(HW, block_p),
            ACC=acc_dtype(x.dtype),
            BLOCK_C=block_c,
            BLOCK_P=block_p,
            num_warps=num_warps_for(block_c * block_p),
        )
    return dx
