r"""Triton kernels of vertical_proj: the VCN's per-channel vertical projection (Eq. 7).

Math (see scstn_vcn/ops/vertical_proj.py), for F (B, C, H) and delta (C, K, H):

    f[b, c, k]      = \sum_h F[b, c, h] delta[c, k, h]
    dF[b, c, h]     = \sum_k g[b, c, k] delta[c, k, h]
    ddelta[c, k, h] = \sum_b g[b, c, k] F[b, c, h]        (b in increasing order)

Design. Every kernel indexes F, delta and f in their natural contiguous layouts with a 3-D tile
[BLOCK_C, BLOCK_K, BLOCK_H] (no permute or copy): the forward and dF reduce the tile over h resp. k;
one program per (image, channel block) for f, per (image, channel block, h chunk) for dF. ddelta is
reduced over the batch inside one program per (channel block, h chunk) that walks b = 0 .. B-1 in order,
so the sum is deterministic without atomics. Long H is covered by chunks of BLOCK_H, large K by chunks of
BLOCK_K. Low precision F is computed in float32 (delta arrives in the compute dtype); offsets are int64.
"""

import torch
import triton
import triton.language as tl

from scstn_vcn.kernels._common import acc_dtype, num_warps_for, pow2


@triton.jit
def _vertical_proj_fwd_kernel(
    F_ptr, delta_ptr, f_ptr, C, K, H,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    c_ok = c < C
    c3 = c[:, None, None]
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        acc = tl.zeros([BLOCK_C, BLOCK_K], dtype=ACC)
        for h0 in range(0, H, BLOCK_H):
            h = h0 + tl.arange(0, BLOCK_H)
            h_ok = h < H
            Fv = tl.load(F_ptr + (b * C + c)[:, None] * H + h[None, :],
                         mask=c_ok[:, None] & h_ok[None, :], other=0.0).to(ACC)
            d = tl.load(delta_ptr + (c3 * K + k[None, :, None]) * H + h[None, None, :],
                        mask=c_ok[:, None, None] & k_ok[None, :, None] & h_ok[None, None, :], other=0.0).to(ACC)
            acc += tl.sum(Fv[:, None, :] * d, axis=2)
        tl.store(f_ptr + (b * C + c)[:, None] * K + k[None, :], acc.to(f_ptr.dtype.element_ty),
                 mask=c_ok[:, None] & k_ok[None, :])


@triton.jit
def _vertical_proj_dF_kernel(
    g_ptr, delta_ptr, dF_ptr, C, K, H,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    h = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    c_ok = c < C
    h_ok = h < H
    acc = tl.zeros([BLOCK_C, BLOCK_H], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        g = tl.load(g_ptr + (b * C + c)[:, None] * K + k[None, :], mask=c_ok[:, None] & k_ok[None, :],
                    other=0.0).to(ACC)
        d = tl.load(delta_ptr + (c[:, None, None] * K + k[None, :, None]) * H + h[None, None, :],
                    mask=c_ok[:, None, None] & k_ok[None, :, None] & h_ok[None, None, :], other=0.0).to(ACC)
        acc += tl.sum(g[:, :, None] * d, axis=1)
    tl.store(dF_ptr + (b * C + c)[:, None] * H + h[None, :], acc.to(dF_ptr.dtype.element_ty),
             mask=c_ok[:, None] & h_ok[None, :])


@triton.jit
def _vertical_proj_ddelta_kernel(
    g_ptr, F_ptr, ddelta_ptr, B, C, K, H,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    c_ok = c < C
    h_ok = h < H
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        acc = tl.zeros([BLOCK_C, BLOCK_K, BLOCK_H], dtype=ACC)
        for b in range(0, B):  # increasing b: a fixed order, deterministic
            row = b * C + c
            g = tl.load(g_ptr + row[:, None] * K + k[None, :], mask=c_ok[:, None] & k_ok[None, :],
                        other=0.0).to(ACC)
            Fv = tl.load(F_ptr + row[:, None] * H + h[None, :], mask=c_ok[:, None] & h_ok[None, :],
                         other=0.0).to(ACC)
            acc += g[:, :, None] * Fv[:, None, :]
        tl.store(ddelta_ptr + (c[:, None, None] * K + k[None, :, None]) * H + h[None, None, :],
                 acc.to(ddelta_ptr.dtype.element_ty),
                 mask=c_ok[:, None, None] & k_ok[None, :, None] & h_ok[None, None, :])


def _blocks(C, K, H):
    # Paper shapes: K = 6 (-> 8), H = 24 or 48 (-> 32, 64): 2048-value tiles of 8 or 4 channels, about
    # 115 registers a thread at 8 warps without spills on sm_90; B C / 8 programs = 24576 at B = 96.
    block_k = pow2(K, lo=1, hi=8)
    block_h = pow2(H, lo=2, hi=64)
    block_c = pow2(C, lo=1, hi=max(1, 2048 // (block_k * block_h)))
    return block_c, block_k, block_h


def vertical_proj_forward(F, delta):
    B, C, H = F.shape
    K = delta.shape[1]
    F = F.contiguous()
    delta = delta.contiguous()
    f = torch.empty((B, C, K), device=F.device, dtype=F.dtype)
    block_c, block_k, block_h = _blocks(C, K, H)
    _vertical_proj_fwd_kernel[(B, triton.cdiv(C, block_c))](
        F, delta, f, C, K, H, ACC=acc_dtype(F.dtype), BLOCK_C=block_c, BLOCK_K=block_k, BLOCK_H=block_h,
        num_warps=num_warps_for(block_c * block_k * block_h),
    )
    return f


def vertical_proj_backward(grad_f, F, delta):
    B, C, H = F.shape
    K = delta.shape[1]
    grad_f = grad_f.contiguous()
    F = F.contiguous()
    delta = delta.contiguous()
    ACC = acc_dtype(F.dtype)
    block_c, block_k, block_h = _blocks(C, K, H)
    warps = num_warps_for(block_c * block_k * block_h)
    dF = torch.empty((B, C, H), device=F.device, dtype=F.dtype)
    _vertical_proj_dF_kernel[(B, triton.cdiv(C, block_c), triton.cdiv(H, block_h))](
        grad_f, delta, dF, C, K, H, ACC=ACC, BLOCK_C=block_c, BLOCK_K=block_k, BLOCK_H=block_h, num_warps=warps,
    )
    # ddelta: one program per channel block walks the whole batch; smaller channel blocks than the
    # other kernels so C / block programs still fill the GPU (C = 2048 -> 256 programs).
    dblock_c = min(block_c, 8)
    ddelta = torch.empty((C, K, H), device=F.device, dtype=delta.dtype)
    _vertical_proj_ddelta_kernel[(triton.cdiv(C, dblock_c), triton.cdiv(H, block_h))](
        grad_f, F, ddelta, B, C, K, H, ACC=ACC, BLOCK_C=dblock_c, BLOCK_K=block_k, BLOCK_H=block_h,
        num_warps=num_warps_for(dblock_c * block_k * block_h),
    )
    return dF, ddelta
