r"""Triton kernels of affine_hpool: affine bilinear resampling + horizontal mean + max in one pass.

Math (see scstn_vcn/ops/affine_hpool.py). For x (B, C, H, W) and theta (B, 2, 3), output pixel (h, w)
has normalised coordinates u_w = (2w + 1) / W - 1, v_h = (2h + 1) / H - 1 and samples x at

    ix = ((theta[0,0] u_w + theta[0,1] v_h + theta[0,2] + 1) W - 1) / 2
    iy = ((theta[1,0] u_w + theta[1,1] v_h + theta[1,2] + 1) H - 1) / 2

bilinearly: with x0 = floor(ix), y0 = floor(iy), tx = ix - x0, ty = iy - y0,

    r[b,c,h,w] = (1-tx)(1-ty) x[y0,x0] + tx(1-ty) x[y0,x0+1] + (1-tx)ty x[y0+1,x0] + tx ty x[y0+1,x0+1]

(neighbours outside the map read 0). out[b,c,h] = mean_w r + max_w r; argmax[b,c,h] = the first w of
the max. Backward, with g = dL/dout and dr[b,c,h,w] = g[b,c,h] (1/W + [w == argmax[b,c,h]]):

    dx[b,c,y,x] = \sum over the samples (h,w) that have (y,x) as a neighbour of dr[b,c,h,w] * weight
    dtheta[b,0,:] = \sum_{c,h,w} dr * dr/dix * (W/2) * (u_w, v_h, 1)
    dtheta[b,1,:] = \sum_{c,h,w} dr * dr/diy * (H/2) * (u_w, v_h, 1)
    dr/dix = (1-ty)(x[y0,x0+1] - x[y0,x0]) + ty (x[y0+1,x0+1] - x[y0+1,x0]), likewise dr/diy.

Forward design. A program owns BLOCK_R rows (c, h) of one image (rows r = c H + h, so neighbouring rows
read neighbouring parts of the same channel plane) and loops over w in chunks of BLOCK_W. It computes the
sample positions, gathers the four neighbours from x (any strides), and reduces each row's samples to
sum, max and first argmax in registers: the resampled map is never written.

Backward design: deterministic, no atomics, correct for ANY theta (rotation and shear included).
  * dtheta: one program per (image, row block), as in the forward, re-gathers the neighbours of its
    samples (the only read of x in the backward), forms the six products above and reduces its tile to
    six partial sums in a buffer partial[b, row_block, 6]; a second kernel adds the row blocks of each
    image in a fixed order.
  * dx: a GATHER per input pixel rather than a scatter from samples. The sampling pattern (which input
    pixel each of the 4 H W (sample, neighbour) pairs of an image touches, with which weight) depends
    on b, h, w only, never on c. So the launcher first builds, per image, an inverse index of that
    pattern: the pairs sorted STABLY by target pixel (a CSR list: for pixel p, the pairs
    start[b,p] .. start[b,p+1]; pairs outside the map form a last bucket that dx never reads). This
    inverts the affine map exactly, whatever theta is (a strong zoom-out just gives some pixels long
    lists). One program per image builds it in one kernel, a counting sort: count the pairs per pixel
    (integer atomics: exact, so order-free), an exclusive scan gives start, then the pairs are placed
    chunk by chunk in pair order, each at its pixel's running cursor plus its rank among the chunk's
    pairs of the same pixel; so every list is in increasing pair order, as a stable sort leaves it.
    The dx kernel, one program per (image, channel block, pixel block), walks each pixel's list in
    that order and sums weight * dr, with dr rebuilt from g and argmax; every dx element is written
    once and summed in a fixed order, so two backward runs are bitwise equal. The index costs
    O(B H W) work and memory, independent of C (negligible next to x). The rotation-free theta of
    SC-STN needs no special path: its lists are just short (about 4 entries per pixel at unit scale).

Rounding: the forward, dtheta and the inverse index compile without fma contraction
(EXACT_POSITIONS: enable_fp_fusion=False, for LLVM and ptxas) and divide with round-to-nearest
(_div), because bitwise agreement of the sample positions is the point there. Each of the three
computes the positions itself (u, v, ix, iy, their floors, the bilinear weights), and the inverse index
must be exactly the forward's sampling pattern: it sends every sample's gradient to the pixels the
forward read, with the weights it read them with. By default Triton on a GPU fuses t00 u + t01 v + t02
and (gx + 1) W - 1 into fmas and compiles float32 division to an approximate divide, while the
interpreter (numpy) and torch round every operation. A last-bit difference moves a weight by a bit and
a sample exactly on a pixel boundary (identity, 90-degree rotations, zoom by 1/2 -- common thetas) to
the neighbouring pixel; compiled so, the kernels round like each other, like the interpreter and like
the same formula in torch on the CPU, and the inverse index equals a stable sort of torch's positions
bitwise on every device (tests/test_triton_kernels.py; _aot_check checks the PTX for fmas and
approximate divisions). It costs a few instructions in gather-bound kernels. The dx kernel and the other
ops' kernels keep Triton's defaults: their results are compared with float64 references within a
tolerance, which is their contract.

Coordinates are clamped to [-2, size + 1] before the floor: all four neighbours of a clamped sample stay
outside the map exactly when they were outside before, and the int32 conversion cannot overflow.
Low precision inputs are computed in float32, float64 in float64. Row, position and sample indices are
int32 (C H and H W below 2^31, checked by the launchers); only pointer offsets are widened to int64.
Blocks of rows or pixels run on grid axis 0 and the batch on axis 1 (axes 1 and 2 are limited to 65,535
programs); every launch runs on the device of x (device_context).
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
    launch_row_pool_forward,
    num_warps_for,
    pow2,
    require_int32_index,
    row_pool_update,
    torch_acc_dtype,
)
from scstn_vcn.kernels._common import row_pool_blocks as _row_blocks

# Compile options of the kernels that compute sample positions (forward, dtheta, inverse index): no
# contraction of a * b + c into one fma, so that they round like each other, the interpreter and torch
# (see "Rounding" in the module doc; they also divide only with _div).
EXACT_POSITIONS = {"enable_fp_fusion": False}


@triton.jit
def _div(a, n, ACC: tl.constexpr):
    """a / n (a in ACC, n an int32 size), rounded to nearest: Triton's float32 `/` compiles to an
    approximate divide on NVIDIA GPUs (float64's rounds to nearest), unlike the interpreter's and
    torch's on the CPU."""
    if ACC == tl.float32:
        return tl.div_rn(a, n * 1.0)  # n * 1.0, not n.to(): Triton passes an n of 1 as a constexpr
    else:
        return a / n


@triton.jit
def _centre(i, n, ACC: tl.constexpr):
    """Normalised coordinate (2 i + 1) / n - 1 of pixel i (int32) along an axis of n pixels."""
    return _div((2 * i + 1).to(ACC), n, ACC) - 1


@triton.jit
def _position(theta_ptr, b, u, v, H, W, ACC: tl.constexpr):
    """Pixel coordinates (ix, iy) of the samples at normalised (u, v) (broadcast against each other)."""
    t00 = tl.load(theta_ptr + b * 6 + 0).to(ACC)
    t01 = tl.load(theta_ptr + b * 6 + 1).to(ACC)
    t02 = tl.load(theta_ptr + b * 6 + 2).to(ACC)
    t10 = tl.load(theta_ptr + b * 6 + 3).to(ACC)
    t11 = tl.load(theta_ptr + b * 6 + 4).to(ACC)
    t12 = tl.load(theta_ptr + b * 6 + 5).to(ACC)
    gx = t00 * u + t01 * v + t02
    gy = t10 * u + t11 * v + t12
    ix = ((gx + 1) * W - 1) * 0.5
    iy = ((gy + 1) * H - 1) * 0.5
    ix = tl.minimum(tl.maximum(ix, -2.0), W + 1.0)
    iy = tl.minimum(tl.maximum(iy, -2.0), H + 1.0)
    return ix, iy


@triton.jit
def _sample(theta_ptr, b, u, v, H, W, ACC: tl.constexpr):
    """Pixel coordinates (ix, iy) of the samples at normalised (u[None, :], v[:, None])."""
    return _position(theta_ptr, b, u[None, :], v[:, None], H, W, ACC)


@triton.jit
def _neighbours(x_ptr, row, ix, iy, H, W, s_h, s_w, mask, ACC: tl.constexpr):
    """The four neighbours (0 outside the map) of each sample and the fractional parts (tx, ty)."""
    x0f = tl.floor(ix)
    y0f = tl.floor(iy)
    tx = ix - x0f
    ty = iy - y0f
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    x1 = x0 + 1
    y1 = y0 + 1
    x0_ok = (x0 >= 0) & (x0 < W)
    x1_ok = (x1 >= 0) & (x1 < W)
    y0_ok = (y0 >= 0) & (y0 < H)
    y1_ok = (y1 >= 0) & (y1 < H)
    ox0 = x0.to(tl.int64) * s_w
    ox1 = x1.to(tl.int64) * s_w
    oy0 = y0.to(tl.int64) * s_h
    oy1 = y1.to(tl.int64) * s_h
    v00 = tl.load(row + oy0 + ox0, mask=mask & y0_ok & x0_ok, other=0.0).to(ACC)
    v01 = tl.load(row + oy0 + ox1, mask=mask & y0_ok & x1_ok, other=0.0).to(ACC)
    v10 = tl.load(row + oy1 + ox0, mask=mask & y1_ok & x0_ok, other=0.0).to(ACC)
    v11 = tl.load(row + oy1 + ox1, mask=mask & y1_ok & x1_ok, other=0.0).to(ACC)
    return v00, v01, v10, v11, tx, ty


@triton.jit
def _affine_hpool_fwd_kernel(
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
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # int32 rows c H + h
    b = tl.program_id(1).to(tl.int64)
    r_ok = r < C * H
    c = r // H
    h = r - c * H
    v = _centre(h, H, ACC)
    row = (x_ptr + b * s_b + c.to(tl.int64) * s_c)[:, None]
    total = tl.zeros([BLOCK_R], dtype=ACC)
    best = tl.full([BLOCK_R], float("-inf"), dtype=ACC)
    best_idx = tl.zeros([BLOCK_R], dtype=tl.int32)
    for w0 in range(0, W, BLOCK_W):
        w = w0 + tl.arange(0, BLOCK_W)
        u = _centre(w, W, ACC)
        mask = r_ok[:, None] & (w < W)[None, :]
        ix, iy = _sample(theta_ptr, b, u, v, H, W, ACC)
        v00, v01, v10, v11, tx, ty = _neighbours(x_ptr, row, ix, iy, H, W, s_h, s_w, mask, ACC)
        val = (v00 * (1 - tx) + v01 * tx) * (1 - ty) + (v10 * (1 - tx) + v11 * tx) * ty
        total, best, best_idx = row_pool_update(val, mask, w, total, best, best_idx)
    out = _div(total, W, ACC) + best
    out_row = b * C * H + r
    tl.store(out_ptr + out_row, out.to(out_ptr.dtype.element_ty), mask=r_ok)
    tl.store(argmax_ptr + out_row, best_idx, mask=r_ok)


@triton.jit
def _affine_hpool_dtheta_kernel(
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
    BLOCK_W: tl.constexpr,
):
    rb = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    r = rb * BLOCK_R + tl.arange(0, BLOCK_R)  # int32 rows c H + h
    r_ok = r < C * H
    c = r // H
    h = r - c * H
    v = _centre(h, H, ACC)
    row = (x_ptr + b * s_b + c.to(tl.int64) * s_c)[:, None]
    g = tl.load(g_ptr + b * C * H + r, mask=r_ok, other=0.0).to(ACC)
    am = tl.load(argmax_ptr + b * C * H + r, mask=r_ok, other=-1)
    g_mean = _div(g, W, ACC)
    # per-row sums of the six products (v_h is constant along a row, so it multiplies the row sum)
    ax_u = tl.zeros([BLOCK_R], dtype=ACC)
    ax_1 = tl.zeros([BLOCK_R], dtype=ACC)
    ay_u = tl.zeros([BLOCK_R], dtype=ACC)
    ay_1 = tl.zeros([BLOCK_R], dtype=ACC)
    for w0 in range(0, W, BLOCK_W):
        w = w0 + tl.arange(0, BLOCK_W)
        u = _centre(w, W, ACC)
        mask = r_ok[:, None] & (w < W)[None, :]
        ix, iy = _sample(theta_ptr, b, u, v, H, W, ACC)
        v00, v01, v10, v11, tx, ty = _neighbours(x_ptr, row, ix, iy, H, W, s_h, s_w, mask, ACC)
        # dr * W * 0.5 keeps ACC: a Python-side W / 2 would be a float32 constant in fp64 runs
        dr = g_mean[:, None] + tl.where(w[None, :] == am[:, None], g[:, None], 0.0)
        dr = tl.where(mask, dr, 0.0)
        gix = ((v01 - v00) * (1 - ty) + (v11 - v10) * ty) * dr * W * 0.5
        giy = ((v10 - v00) * (1 - tx) + (v11 - v01) * tx) * dr * H * 0.5
        ax_u += tl.sum(gix * u[None, :], axis=1)
        ax_1 += tl.sum(gix, axis=1)
        ay_u += tl.sum(giy * u[None, :], axis=1)
        ay_1 += tl.sum(giy, axis=1)
    base = partial_ptr + (b * n_rblocks + rb) * 6
    tl.store(base + 0, tl.sum(ax_u, axis=0))
    tl.store(base + 1, tl.sum(ax_1 * v, axis=0))
    tl.store(base + 2, tl.sum(ax_1, axis=0))
    tl.store(base + 3, tl.sum(ay_u, axis=0))
    tl.store(base + 4, tl.sum(ay_1 * v, axis=0))
    tl.store(base + 5, tl.sum(ay_1, axis=0))


@triton.jit
def _dtheta_reduce_kernel(partial_ptr, dtheta_ptr, n_rblocks, ACC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, 8)
    k_ok = k < 6
    acc = tl.zeros([8], dtype=ACC)
    base = partial_ptr + b * n_rblocks * 6 + k
    for j in range(0, n_rblocks):  # fixed order: deterministic
        acc += tl.load(base + j * 6, mask=k_ok, other=0.0)
    tl.store(dtheta_ptr + b * 6 + k, acc.to(dtheta_ptr.dtype.element_ty), mask=k_ok)


@triton.jit
def _pairs(theta_ptr, b, e, n_pairs, H, W, ACC: tl.constexpr):
    """For pair e = 4 s + k (sample s = h W + w, neighbour k in the order 00 01 10 11): its input pixel
    (H W when outside the map, the last bucket), its sample and its bilinear weight. The position
    arithmetic is the forward's (_position), so the weights are the ones the forward sampled with."""
    s = e // 4
    k = e - s * 4
    sh = s // W
    sw = s - sh * W
    u = _centre(sw, W, ACC)
    v = _centre(sh, H, ACC)
    ix, iy = _position(theta_ptr, b, u, v, H, W, ACC)
    x0f = tl.floor(ix)
    y0f = tl.floor(iy)
    tx = ix - x0f
    ty = iy - y0f
    right = (k & 1) == 1
    lower = k >= 2
    x = x0f.to(tl.int32) + right.to(tl.int32)
    y = y0f.to(tl.int32) + lower.to(tl.int32)
    weight = tl.where(right, tx, 1 - tx) * tl.where(lower, ty, 1 - ty)
    inside = (x >= 0) & (x < W) & (y >= 0) & (y < H) & (e < n_pairs)
    key = tl.where(inside, y * W + x, H * W)
    return key, s, weight


@triton.jit
def _inverse_index_kernel(
    theta_ptr,
    start_ptr,
    sample_ptr,
    weight_ptr,
    cursor_ptr,
    pair_key_ptr,
    pair_weight_ptr,
    H,
    W,
    ACC: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """One program per image: the counting sort of its 4 H W pairs by input pixel (see the module doc).
    Scratch per image: cursor, H W + 1 int32 (first the counts, then each bucket's next free slot), and
    pair_key / pair_weight, 4 H W each (every pair's bucket and weight in pair order). Threads of the
    program exchange them through global memory, ordered by barriers (loaded with .cg, from L2, where
    the atomics and stores land).

    Registers: the positions are computed once, in pass 1, on [BLOCK_E] vectors; pass 3 moves integers
    and the stored weights only, and ranks a chunk's pairs in [BLOCK_E, BLOCK_J] tiles. Computing the
    positions again in pass 3, next to a [BLOCK_E, BLOCK_E] rank tile, took 239 registers (triton
    3.8) to 255 plus a stack (triton 3.6, 576 bytes in float64): the compiler laid the float64
    position arithmetic out in the tile's row layout, several pairs a thread."""
    b = tl.program_id(0).to(tl.int64)
    HW = H * W
    n_pairs = 4 * HW
    cursor = cursor_ptr + b * (HW + 1)
    pair_key = pair_key_ptr + b * n_pairs
    pair_weight = pair_weight_ptr + b * n_pairs
    lane_p = tl.arange(0, BLOCK_P)
    lane_e = tl.arange(0, BLOCK_E)
    for p0 in range(0, HW + 1, BLOCK_P):
        tl.store(cursor + p0 + lane_p, tl.zeros([BLOCK_P], dtype=tl.int32), mask=p0 + lane_p <= HW)
    tl.debug_barrier()
    # 1. every pair's bucket and weight, and the pairs per bucket (integer sums are exact, so the
    #    atomics' order does not matter)
    for e0 in range(0, n_pairs, BLOCK_E):
        e = e0 + lane_e
        e_ok = e < n_pairs
        key, _s, weight = _pairs(theta_ptr, b, e, n_pairs, H, W, ACC)
        tl.store(pair_key + e, key, mask=e_ok)
        tl.store(pair_weight + e, weight.to(pair_weight_ptr.dtype.element_ty), mask=e_ok)
        tl.atomic_add(cursor + key, tl.full([BLOCK_E], 1, dtype=tl.int32), mask=e_ok)
    tl.debug_barrier()
    # 2. exclusive scan: start of every bucket, which is also its first free slot
    carry = 0
    for p0 in range(0, HW + 1, BLOCK_P):
        p = p0 + lane_p
        p_ok = p <= HW
        count = tl.load(cursor + p, mask=p_ok, other=0, cache_modifier=".cg")
        first = carry + tl.cumsum(count, axis=0) - count
        tl.store(start_ptr + b * (HW + 1) + p, first, mask=p_ok)
        tl.store(cursor + p, first, mask=p_ok)
        carry += tl.sum(count, axis=0)
    tl.debug_barrier()
    # 3. placement, chunk by chunk in pair order: slot = cursor of the bucket + rank of the pair among
    #    the chunk's earlier pairs of the same bucket (counted BLOCK_J pairs at a time); then every
    #    pair adds 1 to its bucket's cursor (integer atomics: exact, order-free), which moves the
    #    cursor past the chunk's pairs. Pairs past the end are never earlier than a valid pair.
    for e0 in range(0, n_pairs, BLOCK_E):
        e = e0 + lane_e
        e_ok = e < n_pairs
        key = tl.load(pair_key + e, mask=e_ok, other=0, cache_modifier=".cg")
        rank = tl.zeros([BLOCK_E], dtype=tl.int32)
        for j0 in range(e0, e0 + BLOCK_E, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            key_j = tl.load(pair_key + j, mask=j < n_pairs, other=-1, cache_modifier=".cg")
            earlier = (key_j[None, :] == key[:, None]) & (j[None, :] < e[:, None])
            rank += tl.sum(earlier.to(tl.int32), axis=1)
        slot = tl.load(cursor + key, mask=e_ok, other=0, cache_modifier=".cg") + rank
        weight = tl.load(pair_weight + e, mask=e_ok, other=0.0, cache_modifier=".cg")
        tl.debug_barrier()  # every lane has read its cursor before any is advanced
        tl.atomic_add(cursor + key, tl.full([BLOCK_E], 1, dtype=tl.int32), mask=e_ok)
        tl.store(sample_ptr + b * n_pairs + slot, e // 4, mask=e_ok)
        tl.store(weight_ptr + b * n_pairs + slot, weight, mask=e_ok)
        tl.debug_barrier()  # the advanced cursors are visible to the next chunk


@triton.jit
def _affine_hpool_dx_kernel(
    g_ptr,
    argmax_ptr,
    start_ptr,
    sample_ptr,
    weight_ptr,
    dx_ptr,
    C,
    H,
    W,
    n_entries,
    n_pblocks,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # axis 0 enumerates (channel block, pixel block) pairs, pixel blocks fastest
    cb = tl.program_id(0) // n_pblocks
    pb = tl.program_id(0) - cb * n_pblocks
    b = tl.program_id(1).to(tl.int64)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    HW = H * W
    c_ok = c < C
    p_ok = p < HW
    first = tl.load(start_ptr + b * (HW + 1) + p, mask=p_ok, other=0)
    last = tl.load(start_ptr + b * (HW + 1) + p + 1, mask=p_ok, other=0)
    count = last - first
    longest = tl.max(count, axis=0)
    plane = b * C + c  # int64
    g_rows = g_ptr + plane * H
    a_rows = argmax_ptr + plane * H
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    for e in range(0, longest):
        has = (e < count) & p_ok
        entry = b * n_entries + first + e
        s = tl.load(sample_ptr + entry, mask=has, other=0)
        wt = tl.load(weight_ptr + entry, mask=has, other=0.0).to(ACC)
        sh = s // W
        sw = s - sh * W
        m = c_ok[:, None] & has[None, :]
        gv = tl.load(g_rows[:, None] + sh[None, :], mask=m, other=0.0).to(ACC)
        av = tl.load(a_rows[:, None] + sh[None, :], mask=m, other=-1)
        dr = gv / W + tl.where(av == sw[None, :], gv, 0.0)
        acc += tl.where(m, dr * wt[None, :], 0.0)
    out = dx_ptr + plane[:, None] * HW + p[None, :]
    tl.store(out, acc.to(dx_ptr.dtype.element_ty), mask=c_ok[:, None] & p_ok[None, :])


def _dx_blocks(C, HW):
    # 2048-value tiles of 128 pixels x 16 channels: 126 registers at 8 warps on sm_90 (162 in float64),
    # no spills; the pixel lists (start, sample, weight) are loaded once per tile and reused by its 16
    # channels.
    block_p = pow2(HW, lo=16, hi=128)
    block_c = pow2(C, lo=1, hi=max(1, 2048 // block_p))
    return block_c, block_p


def _index_blocks(HW):
    # (BLOCK_E, BLOCK_J, BLOCK_P, num_warps). 128 pairs a chunk: (M) sorts its 3072 pairs in 24 chunks,
    # each a few round trips to L2; the rank compares them 32 at a time, 16 tile values a thread at 8
    # warps (see the kernel's doc and README's register table).
    block_e = pow2(4 * HW, lo=16, hi=128)
    return block_e, min(block_e, 32), pow2(HW + 1, lo=16, hi=1024), 8


def forward_grid(B, C, H, W):
    block_r, _ = _row_blocks(C, H, W)
    return checked_grid((triton.cdiv(C * H, block_r), B), "affine_hpool forward")


def backward_grids(B, C, H, W):
    """Grids of the backward's kernels: dtheta partials, dtheta reduction, inverse index, dx."""
    block_r, _ = _row_blocks(C, H, W)
    block_c, block_p = _dx_blocks(C, H * W)
    return (
        checked_grid((triton.cdiv(C * H, block_r), B), "affine_hpool backward (dtheta)"),
        checked_grid((B,), "affine_hpool backward (dtheta reduction)"),
        checked_grid((B,), "affine_hpool backward (inverse index)"),
        checked_grid((triton.cdiv(C, block_c) * triton.cdiv(H * W, block_p), B), "affine_hpool backward (dx)"),
    )


def _check_indices(C, H, W):
    require_int32_index(C * H, 1024, "affine_hpool: C * H (rows of x)")
    require_int32_index(4 * H * W, 1024, "affine_hpool: 4 * H * W (sample-neighbour pairs of an image)")


def affine_hpool_forward(x, theta):
    B, C, H, W = x.shape
    _check_indices(C, H, W)
    with device_context(x):
        return launch_row_pool_forward(_affine_hpool_fwd_kernel, x, theta, forward_grid(B, C, H, W), **EXACT_POSITIONS)


def inverse_index(theta, H, W):
    """Per image, the (sample, neighbour) pairs sorted stably by the input pixel they touch (pairs
    outside the map last): start (B, HW + 1) int32 offsets, sample (B, 4 HW) int32 = h W + w, weight
    (B, 4 HW) in theta's dtype. theta must be contiguous, in the compute dtype; one kernel launch."""
    B = theta.shape[0]
    HW = H * W
    start = torch.empty((B, HW + 1), device=theta.device, dtype=torch.int32)
    sample = torch.empty((B, 4 * HW), device=theta.device, dtype=torch.int32)
    weight = torch.empty((B, 4 * HW), device=theta.device, dtype=theta.dtype)
    cursor = torch.empty((B, HW + 1), device=theta.device, dtype=torch.int32)  # scratch
    pair_key = torch.empty_like(sample)  # scratch
    pair_weight = torch.empty_like(weight)  # scratch
    block_e, block_j, block_p, warps = _index_blocks(HW)
    with device_context(theta):
        _inverse_index_kernel[checked_grid((B,), "affine_hpool inverse index")](
            theta,
            start,
            sample,
            weight,
            cursor,
            pair_key,
            pair_weight,
            H,
            W,
            ACC=acc_dtype(theta.dtype),
            BLOCK_E=block_e,
            BLOCK_J=block_j,
            BLOCK_P=block_p,
            num_warps=warps,
            **EXACT_POSITIONS,
        )
    return start, sample, weight


def affine_hpool_backward(grad_out, x, theta, argmax):
    B, C, H, W = x.shape
    HW = H * W
    _check_indices(C, H, W)
    grad_out = grad_out.contiguous()
    argmax = argmax.contiguous()
    theta = theta.contiguous()
    acc_t = torch_acc_dtype(x.dtype)
    ACC = acc_dtype(x.dtype)
    dtheta_grid, reduce_grid, _, dx_grid = backward_grids(B, C, H, W)

    block_r, block_w = _row_blocks(C, H, W)
    n_rblocks = dtheta_grid[0]
    partial = torch.empty((B, n_rblocks, 6), device=x.device, dtype=acc_t)
    grad_theta = torch.empty((B, 2, 3), device=x.device, dtype=theta.dtype)
    dx = torch.empty((B, C, H, W), device=x.device, dtype=x.dtype)
    block_c, block_p = _dx_blocks(C, HW)
    with device_context(x):
        _affine_hpool_dtheta_kernel[dtheta_grid](
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
            BLOCK_W=block_w,
            num_warps=num_warps_for(block_r * block_w),
            **EXACT_POSITIONS,
        )
        _dtheta_reduce_kernel[reduce_grid](partial, grad_theta, n_rblocks, ACC=ACC, num_warps=1)
        start, sample, weight = inverse_index(theta.to(acc_t).contiguous(), H, W)
        _affine_hpool_dx_kernel[dx_grid](
            grad_out,
            argmax,
            start,
            sample,
            weight,
            dx,
            C,
            H,
            W,
            4 * HW,
            triton.cdiv(HW, block_p),
            ACC=ACC,
            BLOCK_C=block_c,
            BLOCK_P=block_p,
            num_warps=num_warps_for(block_c * block_p),
        )
    return dx, grad_theta
