r"""Triton kernels of affine_hpool_separable: affine_hpool for a theta without rotation or shear.

Math (see scstn_vcn/ops/affine_hpool_separable.py). theta[b] = [[a, 0, e], [0, d, f]] (the entries
theta[b,0,1] and theta[b,1,0] are ignored: taken as 0, their gradient is 0). With the conventions of
affine_grid / grid_sample (align_corners=False, zeros padding), output column w and output row h sample

    u_w = (2w + 1) / W - 1,   ix_w = ((a u_w + e + 1) W - 1) / 2,   x0_w = floor(ix_w), tx_w = ix_w - x0_w
    v_h = (2h + 1) / H - 1,   iy_h = ((d v_h + f + 1) H - 1) / 2,   y0_h = floor(iy_h), ty_h = iy_h - y0_h

so the bilinear resampling factorises: per channel r = A_y X A_x^T with the banded matrices

    A_y[h, y] = (1 - ty_h) [y == y0_h] + ty_h [y == y0_h + 1]      (y in [0, H): taps outside read 0)
    A_x[w, x] = (1 - tx_w) [x == x0_w] + tx_w [x == x0_w + 1]      (x in [0, W))

Forward: out[b,c,h] = mean_w r[h,w] + max_w r[h,w], argmax = the first w of the max (int32).
Backward, with g = dL/dout and a = argmax: dR[h,w] = g_h / W + g_h [w == a_h]. Since dR has one
non-constant column per row, P = dR A_x is closed-form,

    P[h, x] = g_h (S[x] / W + A_x[a_h, x]),   S[x] = \sum_w A_x[w, x]   (column sums of A_x),

and dX = A_y^T P: dX[y, x] = \sum_h A_y[h, y] P[h, x], a sum over the few h whose row taps include y.
dtheta: with T = A_y X (rows interpolated in y) and E[h, x] = X[y0_h + 1, x] - X[y0_h, x] (0 outside),

    dL/dix_w = \sum_{c,h} dR[h,w] (T[h, x0_w + 1] - T[h, x0_w]) = \sum_{c,h} \sum_x T[h,x] dR[h,w] D[w,x]
    dL/diy_h = \sum_{c,w} dR[h,w] (S_row[y0_h + 1, w] - S_row[y0_h, w]) = \sum_c \sum_x E[h,x] P[h,x]

with D[w, x] = [x == x0_w + 1] - [x == x0_w]; summing over w first, \sum_w dR[h,w] D[w,x] u_w^k =
g_h (\sum_w u_w^k D[w,x] / W + u_{a_h}^k D[a_h, x]) for k = 0, 1. Then, with d ix/d a = (W/2) u_w,
d ix/d e = W/2, d iy/d d = (H/2) v_h, d iy/d f = H/2:

    dtheta[b] = [[(W/2) \sum_w u_w dL/dix_w, 0, (W/2) \sum_w dL/dix_w],
                 [0, (H/2) \sum_h v_h dL/diy_h, (H/2) \sum_h dL/diy_h]]

Design. Taps are computed per column (a vector over w) and per row (a vector over h), never per sample.
  * forward: a program owns BLOCK_R rows (c, h) of one image, loops over w in chunks, gathers the four
    neighbours of each sample (cached) and reduces sum, max and first argmax in registers.
  * dtheta: a program owns BLOCK_R rows; per row it loads the two input rows y0_h, y0_h + 1 whole
    (contiguous along x), forms T, E, P and the two D-weighted sums above in O(W), and reduces its tile
    to 4 partial sums; a second kernel adds the partials of each image in a fixed order.
  * dx: a program owns one output row y of BLOCK_C channels of one image (all x). It finds the h whose
    row taps include y (y0_h is monotone in h, so they form a short range, about 2 / |d| rows; the
    range is found by scanning the row taps and widened by one each side, every h is still weighted by
    its exact tap) and sums A_y[h, y] P[h, :] over that range in increasing h. Every dx element is
    written once, no atomics, no inverse index: two backward runs are bitwise equal.
Positions are clamped to [-2, size + 1] before the floor (both taps of a clamped position stay outside
the map, and the int32 conversion cannot overflow). Row indices are int32 (C H < 2^31, checked by the
launchers); pointer offsets are int64. Row blocks run on grid axis 0, the batch on axis 1. Low precision
is computed in float32, float64 in float64; x may have any strides.
"""

import torch
import triton
import triton.language as tl

from scstn_vcn.kernels._common import (
    acc_dtype,
    checked_grid,
    device_context,
    launch_row_pool_forward,
    num_warps_for,
    pow2,
    require_int32_index,
    row_pool_update,
    torch_acc_dtype,
)
from scstn_vcn.kernels._common import row_pool_blocks as _row_blocks


@triton.jit
def _axis(theta_ptr, b, SCALE: tl.constexpr, SHIFT: tl.constexpr, ACC: tl.constexpr):
    """theta[b] entries (scale, shift) of one axis: (0, 2) for x, (4, 5) for y."""
    scale = tl.load(theta_ptr + b * 6 + SCALE).to(ACC)
    shift = tl.load(theta_ptr + b * 6 + SHIFT).to(ACC)
    return scale, shift


@triton.jit
def _taps(scale, shift, i, n, ACC: tl.constexpr):
    """Taps of output index i (int32, any shape) along an axis of size n: the first input index (int32),
    the fraction of the second tap, and the normalised coordinate of i."""
    coord = (2 * i + 1).to(ACC) / n - 1
    pos = ((scale * coord + shift + 1) * n - 1) * 0.5
    pos = tl.minimum(tl.maximum(pos, -2.0), n + 1.0)
    first = tl.floor(pos)
    return first.to(tl.int32), pos - first, coord


@triton.jit
def _row_taps(x_ptr, theta_ptr, b, r, r_ok, H, s_b, s_c, s_h, ACC: tl.constexpr):
    """For rows r = c H + h of image b: whether the row taps y0_h, y0_h + 1 lie in the map (and r is a
    real row), pointers to those two input rows ([BLOCK_R, 1]), the fraction ty_h and v_h."""
    c = r // H
    h = r - c * H
    ys, yt = _axis(theta_ptr, b, 4, 5, ACC)
    y0, ty, v = _taps(ys, yt, h, H, ACC)
    y0_ok = r_ok & (y0 >= 0) & (y0 < H)
    y1_ok = r_ok & (y0 + 1 >= 0) & (y0 + 1 < H)
    plane = x_ptr + b * s_b + c.to(tl.int64) * s_c
    row0 = (plane + y0.to(tl.int64) * s_h)[:, None]
    row1 = (plane + (y0 + 1).to(tl.int64) * s_h)[:, None]
    return y0_ok, y1_ok, row0, row1, ty, v


@triton.jit
def _column_sums(scale, shift, x, W, ACC: tl.constexpr, BLOCK_W: tl.constexpr, WITH_D: tl.constexpr):
    """For input columns x: S[x] = sum_w A_x[w,x] and, with WITH_D, sum_w D[w,x] and sum_w u_w D[w,x]."""
    s = tl.zeros(x.shape, dtype=ACC)
    d1 = tl.zeros(x.shape, dtype=ACC)
    du = tl.zeros(x.shape, dtype=ACC)
    for w0 in range(0, W, BLOCK_W):
        w = w0 + tl.arange(0, BLOCK_W)
        x0, tx, u = _taps(scale, shift, w, W, ACC)
        w_ok = (w < W)[:, None]
        at0 = w_ok & (x[None, :] == x0[:, None])
        at1 = w_ok & (x[None, :] == x0[:, None] + 1)
        s += tl.sum(tl.where(at0, 1 - tx[:, None], 0.0) + tl.where(at1, tx[:, None], 0.0), axis=0)
        if WITH_D:
            dw = tl.where(at1, 1.0, 0.0).to(ACC) - tl.where(at0, 1.0, 0.0).to(ACC)
            d1 += tl.sum(dw, axis=0)
            du += tl.sum(dw * u[:, None], axis=0)
    return s, d1, du


@triton.jit
def _separable_fwd_kernel(
    x_ptr,
    theta_ptr,
    out_ptr,
    argmax_ptr,
    C,
    H,
    W,
    s_b,
    s_c,
    s_h,
    s_w,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    rb = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    r = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < C * H
    xs, xt = _axis(theta_ptr, b, 0, 2, ACC)
    y0_ok, y1_ok, row0, row1, ty, _v = _row_taps(x_ptr, theta_ptr, b, r, r_ok, H, s_b, s_c, s_h, ACC)
    wy1 = ty[:, None]
    wy0 = 1 - wy1
    total = tl.zeros([BLOCK_R], dtype=ACC)
    best = tl.full([BLOCK_R], float("-inf"), dtype=ACC)
    best_idx = tl.zeros([BLOCK_R], dtype=tl.int32)
    for w0 in range(0, W, BLOCK_W):
        w = w0 + tl.arange(0, BLOCK_W)
        w_ok = w < W
        x0, tx, _u = _taps(xs, xt, w, W, ACC)
        x0_ok = (w_ok & (x0 >= 0) & (x0 < W))[None, :]
        x1_ok = (w_ok & (x0 + 1 >= 0) & (x0 + 1 < W))[None, :]
        ox0 = (x0.to(tl.int64) * s_w)[None, :]
        ox1 = (x0 + 1).to(tl.int64)[None, :] * s_w
        v00 = tl.load(row0 + ox0, mask=y0_ok[:, None] & x0_ok, other=0.0).to(ACC)
        v01 = tl.load(row0 + ox1, mask=y0_ok[:, None] & x1_ok, other=0.0).to(ACC)
        v10 = tl.load(row1 + ox0, mask=y1_ok[:, None] & x0_ok, other=0.0).to(ACC)
        v11 = tl.load(row1 + ox1, mask=y1_ok[:, None] & x1_ok, other=0.0).to(ACC)
        wx1 = tx[None, :]
        wx0 = 1 - wx1
        val = wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)
        mask = r_ok[:, None] & w_ok[None, :]
        total, best, best_idx = row_pool_update(val, mask, w, total, best, best_idx)
    out = total / W + best
    tl.store(out_ptr + b * C * H + r, out.to(out_ptr.dtype.element_ty), mask=r_ok)
    tl.store(argmax_ptr + b * C * H + r, best_idx, mask=r_ok)


@triton.jit
def _separable_dtheta_kernel(
    x_ptr,
    theta_ptr,
    g_ptr,
    argmax_ptr,
    partial_ptr,
    C,
    H,
    W,
    n_rblocks,
    s_b,
    s_c,
    s_h,
    s_w,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_X: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    rb = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    r = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < C * H
    xs, xt = _axis(theta_ptr, b, 0, 2, ACC)
    y0_ok, y1_ok, row0, row1, ty, v = _row_taps(x_ptr, theta_ptr, b, r, r_ok, H, s_b, s_c, s_h, ACC)
    g = tl.load(g_ptr + b * C * H + r, mask=r_ok, other=0.0).to(ACC)
    am = tl.load(argmax_ptr + b * C * H + r, mask=r_ok, other=0)
    xa, txa, ua = _taps(xs, xt, am, W, ACC)  # the taps of each row's argmax column
    g_mean = (g / W)[:, None]
    g_col = g[:, None]
    gu_col = (g * ua)[:, None]
    wy1 = ty[:, None]
    wy0 = 1 - wy1
    ex_u = tl.zeros([BLOCK_R], dtype=ACC)  # sum_x T Q_u: d/d ix, u-weighted
    ex_1 = tl.zeros([BLOCK_R], dtype=ACC)  # sum_x T Q
    ey = tl.zeros([BLOCK_R], dtype=ACC)  # sum_x E P: dL/diy_h of the row
    for xc in range(0, W, BLOCK_X):
        x = xc + tl.arange(0, BLOCK_X)
        x_ok = (x < W)[None, :]
        s, d1, du = _column_sums(xs, xt, x, W, ACC, BLOCK_W, True)
        ox = x.to(tl.int64)[None, :] * s_w
        x_0 = tl.load(row0 + ox, mask=y0_ok[:, None] & x_ok, other=0.0).to(ACC)
        x_1 = tl.load(row1 + ox, mask=y1_ok[:, None] & x_ok, other=0.0).to(ACC)
        t = wy0 * x_0 + wy1 * x_1
        e = x_1 - x_0
        hit0 = x[None, :] == xa[:, None]
        hit1 = x[None, :] == xa[:, None] + 1
        ax_a = tl.where(hit0, 1 - txa[:, None], 0.0) + tl.where(hit1, txa[:, None], 0.0)  # A_x[a, x]
        d_a = tl.where(hit1, 1.0, 0.0).to(ACC) - tl.where(hit0, 1.0, 0.0).to(ACC)  # D[a, x]
        p = g_mean * s[None, :] + g_col * ax_a
        q = g_mean * d1[None, :] + g_col * d_a
        q_u = g_mean * du[None, :] + gu_col * d_a
        ex_u += tl.sum(t * q_u, axis=1)
        ex_1 += tl.sum(t * q, axis=1)
        ey += tl.sum(e * p, axis=1)
    base = partial_ptr + (b * n_rblocks + rb) * 4
    tl.store(base + 0, tl.sum(ex_u, axis=0))
    tl.store(base + 1, tl.sum(ex_1, axis=0))
    tl.store(base + 2, tl.sum(ey * v, axis=0))
    tl.store(base + 3, tl.sum(ey, axis=0))


@triton.jit
def _separable_dtheta_reduce_kernel(partial_ptr, dtheta_ptr, n_rblocks, H, W, ACC: tl.constexpr, BLOCK_J: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, 4)
    acc = tl.zeros([BLOCK_J, 4], dtype=ACC)
    base = partial_ptr + b * n_rblocks * 4
    for j0 in range(0, n_rblocks, BLOCK_J):  # fixed order and a fixed tree: deterministic
        j = j0 + tl.arange(0, BLOCK_J)
        acc += tl.load(base + j[:, None] * 4 + k[None, :], mask=(j < n_rblocks)[:, None], other=0.0)
    sums = tl.sum(acc, axis=0)
    # k = 0, 1 -> theta[0, 0], theta[0, 2] (factor W/2); k = 2, 3 -> theta[1, 1], theta[1, 2] (factor H/2)
    factor = tl.where(k < 2, W * 0.5, H * 0.5).to(ACC)
    slot = tl.where(k < 2, 2 * k, k + 2)
    out = dtheta_ptr + b * 6
    tl.store(out + slot, (sums * factor).to(dtheta_ptr.dtype.element_ty))
    tl.store(out + 2 * tl.arange(0, 2) + 1, tl.zeros([2], dtype=dtheta_ptr.dtype.element_ty))


@triton.jit
def _separable_dx_kernel(
    theta_ptr,
    g_ptr,
    argmax_ptr,
    dx_ptr,
    C,
    H,
    W,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_X: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid = tl.program_id(0)  # (channel block, y), y fastest: neighbours share their g and argmax rows
    b = tl.program_id(1).to(tl.int64)
    cb = pid // H
    y = pid - cb * H
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    ys, yt = _axis(theta_ptr, b, 4, 5, ACC)
    xs, xt = _axis(theta_ptr, b, 0, 2, ACC)
    # the rows h whose taps include y (a range, as y0_h is monotone in h)
    lo = H
    hi = -1
    for h0 in range(0, H, BLOCK_H):
        hh = h0 + tl.arange(0, BLOCK_H)
        y0h, _frac, _coord = _taps(ys, yt, hh, H, ACC)
        hit = (hh < H) & ((y0h == y) | (y0h + 1 == y))
        lo = tl.minimum(lo, tl.min(tl.where(hit, hh, H), axis=0))
        hi = tl.maximum(hi, tl.max(tl.where(hit, hh, -1), axis=0))
    lo = tl.maximum(lo - 1, 0)
    hi = tl.minimum(hi + 1, H - 1)
    rows = (b * C + c.to(tl.int64)) * H
    for xc in range(0, W, BLOCK_X):
        x = xc + tl.arange(0, BLOCK_X)
        s, _d1, _du = _column_sums(xs, xt, x, W, ACC, BLOCK_W, False)
        acc = tl.zeros([BLOCK_C, BLOCK_X], dtype=ACC)
        for h in range(lo, hi + 1):
            y0h, tyh, _v = _taps(ys, yt, tl.zeros([], dtype=tl.int32) + h, H, ACC)  # a tensor in the interpreter too
            wy = tl.where(y0h == y, 1 - tyh, 0.0) + tl.where(y0h + 1 == y, tyh, 0.0)  # A_y[h, y]
            g = tl.load(g_ptr + rows + h, mask=c_ok, other=0.0).to(ACC)
            am = tl.load(argmax_ptr + rows + h, mask=c_ok, other=0)
            xa, txa, _ua = _taps(xs, xt, am, W, ACC)
            ax_a = tl.where(x[None, :] == xa[:, None], 1 - txa[:, None], 0.0) + tl.where(
                x[None, :] == xa[:, None] + 1, txa[:, None], 0.0
            )
            p = (g / W)[:, None] * s[None, :] + g[:, None] * ax_a  # P[h, x] = (dR A_x)[h, x]
            acc += wy * p
        out = dx_ptr + (rows[:, None] + y) * W + x[None, :]
        tl.store(out, acc.to(dx_ptr.dtype.element_ty), mask=c_ok[:, None] & (x < W)[None, :])


REDUCE_BLOCK = 128  # row blocks of an image added per step of the dtheta reduction


def _dtheta_blocks(C, H, W):
    # Whole input rows (x up to 64 a chunk) of 1024 // BLOCK_X rows; the column sums use W-chunks of 32.
    block_x = pow2(W, lo=2, hi=64)
    block_r = pow2(C * H, lo=1, hi=max(1, 1024 // block_x))
    return block_r, block_x, pow2(W, lo=2, hi=32)


def _dx_blocks(C, H, W, dtype=torch.float32):
    # One output row of up to 1024 // BLOCK_X channels (512 in float64, which spilled at (M) on sm_90);
    # the row-tap scan takes H in chunks of 256.
    block_x = pow2(W, lo=2, hi=64)
    tile = 512 if dtype == torch.float64 else 1024
    block_c = pow2(C, lo=1, hi=max(1, tile // block_x))
    return block_c, block_x, pow2(H, lo=2, hi=256), pow2(W, lo=2, hi=32)


def forward_grid(B, C, H, W):
    block_r, _ = _row_blocks(C, H, W)
    return checked_grid((triton.cdiv(C * H, block_r), B), "affine_hpool_separable forward")


def backward_grids(B, C, H, W, dtype=torch.float32):
    """Grids of the backward's kernels: dtheta partials, dtheta reduction, dx."""
    block_r, _, _ = _dtheta_blocks(C, H, W)
    block_c, _, _, _ = _dx_blocks(C, H, W, dtype)
    return (
        checked_grid((triton.cdiv(C * H, block_r), B), "affine_hpool_separable backward (dtheta)"),
        checked_grid((B,), "affine_hpool_separable backward (dtheta reduction)"),
        checked_grid((triton.cdiv(C, block_c) * H, B), "affine_hpool_separable backward (dx)"),
    )


def _check_indices(C, H, W):
    require_int32_index(C * H, 1024, "affine_hpool_separable: C * H (rows of x)")
    require_int32_index(C * H * W, 1, "affine_hpool_separable: C * H * W (dx elements of an image)")


def affine_hpool_separable_forward(x, theta):
    B, C, H, W = x.shape
    _check_indices(C, H, W)
    with device_context(x):
        return launch_row_pool_forward(_separable_fwd_kernel, x, theta, forward_grid(B, C, H, W))


def affine_hpool_separable_backward(grad_out, x, theta, argmax):
    B, C, H, W = x.shape
    _check_indices(C, H, W)
    grad_out = grad_out.contiguous()
    argmax = argmax.contiguous()
    theta = theta.contiguous()
    ACC = acc_dtype(x.dtype)
    dtheta_grid, reduce_grid, dx_grid = backward_grids(B, C, H, W, x.dtype)
    n_rblocks = dtheta_grid[0]
    partial = torch.empty((B, n_rblocks, 4), device=x.device, dtype=torch_acc_dtype(x.dtype))
    grad_theta = torch.empty((B, 2, 3), device=x.device, dtype=theta.dtype)
    dx = torch.empty((B, C, H, W), device=x.device, dtype=x.dtype)
    block_r, block_x, block_w = _dtheta_blocks(C, H, W)
    block_c, dx_block_x, block_h, dx_block_w = _dx_blocks(C, H, W, x.dtype)
    with device_context(x):
        _separable_dtheta_kernel[dtheta_grid](
            x,
            theta,
            grad_out,
            argmax,
            partial,
            C,
            H,
            W,
            n_rblocks,
            *x.stride(),
            ACC=ACC,
            BLOCK_R=block_r,
            BLOCK_X=block_x,
            BLOCK_W=block_w,
            num_warps=num_warps_for(block_r * block_x),
        )
        _separable_dtheta_reduce_kernel[reduce_grid](
            partial,
            grad_theta,
            n_rblocks,
            H,
            W,
            ACC=ACC,
            BLOCK_J=REDUCE_BLOCK,
            num_warps=4,
        )
        _separable_dx_kernel[dx_grid](
            theta,
            grad_out,
            argmax,
            dx,
            C,
            H,
            W,
            ACC=ACC,
            BLOCK_C=block_c,
            BLOCK_X=dx_block_x,
            BLOCK_H=block_h,
            BLOCK_W=dx_block_w,
            num_warps=num_warps_for(block_c * dx_block_x),
        )
    return dx, grad_theta
