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
    on b, h, w only, never on c. So the launcher builds, per image, an inverse index of that pattern with
    torch ops: the in-map pairs sorted STABLY by target pixel (a CSR list: for pixel p, the pairs
    start[b,p] .. start[b,p+1]). This inverts the affine map exactly, whatever theta is (a strong zoom-out
    just gives some pixels long lists). The dx kernel, one program per (image, channel block, pixel
    block), walks each pixel's list in its sorted order and sums weight * dr, with dr rebuilt from g and
    argmax; every dx element is written once and summed in a fixed order, so two backward runs are
    bitwise equal. The index costs O(B H W) work and memory, independent of C (negligible next to x).
    The rotation-free theta of SC-STN needs no special path: its lists are just short (about 4 entries
    per pixel at unit scale).

Coordinates are clamped to [-2, size + 1] before the floor: all four neighbours of a clamped sample stay
outside the map exactly when they were outside before, and the int32 conversion cannot overflow.
Low precision inputs are computed in float32, float64 in float64; offsets are int64.
NaN inputs: the sums, hence the outputs, are NaN as in eager, but the max ignores NaN, so argmax (and
the max's gradient) may point at a different element than torch.max, which returns the NaN's index.
"""

import torch
import triton
import triton.language as tl

from scstn_vcn.kernels._common import acc_dtype, num_warps_for, pow2, torch_acc_dtype


@triton.jit
def _sample(theta_ptr, b, u, v, H, W, ACC: tl.constexpr):
    """Pixel coordinates (ix, iy) of the samples at normalised (u[None, :], v[:, None])."""
    t00 = tl.load(theta_ptr + b * 6 + 0).to(ACC)
    t01 = tl.load(theta_ptr + b * 6 + 1).to(ACC)
    t02 = tl.load(theta_ptr + b * 6 + 2).to(ACC)
    t10 = tl.load(theta_ptr + b * 6 + 3).to(ACC)
    t11 = tl.load(theta_ptr + b * 6 + 4).to(ACC)
    t12 = tl.load(theta_ptr + b * 6 + 5).to(ACC)
    gx = t00 * u[None, :] + t01 * v[:, None] + t02
    gy = t10 * u[None, :] + t11 * v[:, None] + t12
    ix = ((gx + 1) * W - 1) * 0.5
    iy = ((gy + 1) * H - 1) * 0.5
    ix = tl.minimum(tl.maximum(ix, -2.0), W + 1.0)
    iy = tl.minimum(tl.maximum(iy, -2.0), H + 1.0)
    return ix, iy


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
    x_ptr, theta_ptr, out_ptr, argmax_ptr,
    C, H, W, s_b, s_c, s_h, s_w,
    ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    r_ok = r < C * H
    c = r // H
    h = r - c * H
    v = (2 * h + 1).to(ACC) / H - 1
    row = (x_ptr + b * s_b + c * s_c)[:, None]
    total = tl.zeros([BLOCK_R], dtype=ACC)
    best = tl.full([BLOCK_R], float("-inf"), dtype=ACC)
    best_idx = tl.zeros([BLOCK_R], dtype=tl.int32)
    for w0 in range(0, W, BLOCK_W):
        w = w0 + tl.arange(0, BLOCK_W)
        u = (2 * w + 1).to(ACC) / W - 1
        mask = r_ok[:, None] & (w < W)[None, :]
        ix, iy = _sample(theta_ptr, b, u, v, H, W, ACC)
        v00, v01, v10, v11, tx, ty = _neighbours(x_ptr, row, ix, iy, H, W, s_h, s_w, mask, ACC)
        val = (v00 * (1 - tx) + v01 * tx) * (1 - ty) + (v10 * (1 - tx) + v11 * tx) * ty
        val = tl.where(mask, val, 0.0)
        total += tl.sum(val, axis=1)
        vm = tl.where(mask, val, float("-inf"))
        chunk_max = tl.max(vm, axis=1)
        cand = tl.where((vm == chunk_max[:, None]) & mask, w[None, :], 2147483647)
        chunk_idx = tl.min(cand, axis=1)
        better = chunk_max > best
        best_idx = tl.where(better, chunk_idx, best_idx)
        best = tl.where(better, chunk_max, best)
    out = total / W + best
    tl.store(out_ptr + b * C * H + r, out.to(out_ptr.dtype.element_ty), mask=r_ok)
    tl.store(argmax_ptr + b * C * H + r, best_idx, mask=r_ok)


@triton.jit
def _affine_hpool_dtheta_kernel(
    x_ptr, theta_ptr, g_ptr, argmax_ptr, partial_ptr,
    C, H, W, n_rblocks, s_b, s_c, s_h, s_w,
    ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    rb = tl.program_id(1).to(tl.int64)
    r = rb * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    r_ok = r < C * H
    c = r // H
    h = r - c * H
    v = (2 * h + 1).to(ACC) / H - 1
    row = (x_ptr + b * s_b + c * s_c)[:, None]
    g = tl.load(g_ptr + b * C * H + r, mask=r_ok, other=0.0).to(ACC)
    am = tl.load(argmax_ptr + b * C * H + r, mask=r_ok, other=-1)
    # per-row sums of the six products (v_h is constant along a row, so it multiplies the row sum)
    ax_u = tl.zeros([BLOCK_R], dtype=ACC)
    ax_1 = tl.zeros([BLOCK_R], dtype=ACC)
    ay_u = tl.zeros([BLOCK_R], dtype=ACC)
    ay_1 = tl.zeros([BLOCK_R], dtype=ACC)
    for w0 in range(0, W, BLOCK_W):
        w = w0 + tl.arange(0, BLOCK_W)
        u = (2 * w + 1).to(ACC) / W - 1
        mask = r_ok[:, None] & (w < W)[None, :]
        ix, iy = _sample(theta_ptr, b, u, v, H, W, ACC)
        v00, v01, v10, v11, tx, ty = _neighbours(x_ptr, row, ix, iy, H, W, s_h, s_w, mask, ACC)
        # g / W and x * W * 0.5 keep ACC: a Python-side 1.0 / W would be a float32 constant in fp64 runs
        dr = g[:, None] / W + tl.where(w[None, :] == am[:, None], g[:, None], 0.0)
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
def _affine_hpool_dx_kernel(
    g_ptr, argmax_ptr, start_ptr, sample_ptr, weight_ptr, dx_ptr,
    C, H, W, n_entries,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    p = tl.program_id(2).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    HW = H * W
    c_ok = c < C
    p_ok = p < HW
    first = tl.load(start_ptr + b * (HW + 1) + p, mask=p_ok, other=0)
    last = tl.load(start_ptr + b * (HW + 1) + p + 1, mask=p_ok, other=0)
    count = last - first
    longest = tl.max(count, axis=0)
    g_rows = g_ptr + (b * C + c) * H
    a_rows = argmax_ptr + (b * C + c) * H
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
    out = dx_ptr + (b * C + c)[:, None] * HW + p[None, :]
    tl.store(out, acc.to(dx_ptr.dtype.element_ty), mask=c_ok[:, None] & p_ok[None, :])


def _row_blocks(C, H, W):
    # Paper shapes: W = 8 or 16, C H = 49152 or 98304 rows; 1024-sample tiles at 8 warps (4 samples,
    # 16 gathers a thread in flight) compile to 80 (forward) and 128 (dtheta) registers without spills
    # on sm_90, where 2048-sample tiles at 4 warps spilled; B * 384..1536 programs at B = 96.
    block_w = pow2(W, lo=2, hi=32)
    block_r = pow2(C * H, lo=1, hi=max(1, 1024 // block_w))
    return block_r, block_w


def _dx_blocks(C, HW):
    # 2048-value tiles of 128 pixels x 16 channels: 126 registers at 8 warps on sm_90, no spills; the
    # pixel lists (start, sample, weight) are loaded once per tile and reused by its 16 channels.
    block_p = pow2(HW, lo=16, hi=128)
    block_c = pow2(C, lo=1, hi=max(1, 2048 // block_p))
    return block_c, block_p


def affine_hpool_forward(x, theta):
    B, C, H, W = x.shape
    theta = theta.contiguous()
    out = torch.empty((B, C, H), device=x.device, dtype=x.dtype)
    argmax = torch.empty((B, C, H), device=x.device, dtype=torch.int32)
    block_r, block_w = _row_blocks(C, H, W)
    _affine_hpool_fwd_kernel[(B, triton.cdiv(C * H, block_r))](
        x, theta, out, argmax, C, H, W, *x.stride(),
        ACC=acc_dtype(x.dtype), BLOCK_R=block_r, BLOCK_W=block_w,
        num_warps=num_warps_for(block_r * block_w),
    )
    return out, argmax


def _inverse_index(theta, H, W):
    """Per image, the (sample, neighbour) pairs that land inside the map, sorted stably by the input
    pixel they touch: start (B, HW + 1) int64 offsets, sample (B, 4 HW) int32 = h W + w, weight (B, 4 HW).
    Same arithmetic as the kernels' _sample / _neighbours, in theta's dtype."""
    B = theta.shape[0]
    dev, dt = theta.device, theta.dtype
    u = (2 * torch.arange(W, device=dev, dtype=dt) + 1) / W - 1
    v = (2 * torch.arange(H, device=dev, dtype=dt) + 1) / H - 1
    t = theta.reshape(B, 6, 1, 1)
    gx = t[:, 0] * u + t[:, 1] * v[:, None] + t[:, 2]  # (B, H, W)
    gy = t[:, 3] * u + t[:, 4] * v[:, None] + t[:, 5]
    ix = (((gx + 1) * W - 1) * 0.5).clamp(-2.0, W + 1.0)
    iy = (((gy + 1) * H - 1) * 0.5).clamp(-2.0, H + 1.0)
    x0f, y0f = ix.floor(), iy.floor()
    tx, ty = ix - x0f, iy - y0f
    x0, y0 = x0f.long(), y0f.long()
    xs = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=-1)  # (B, H, W, 4) neighbour order 00 01 10 11
    ys = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=-1)
    weight = torch.stack([(1 - tx) * (1 - ty), tx * (1 - ty), (1 - tx) * ty, tx * ty], dim=-1)
    inside = (xs >= 0) & (xs < W) & (ys >= 0) & (ys < H)
    HW = H * W
    key = torch.where(inside, ys * W + xs, HW).reshape(B, 4 * HW)  # outside pairs sort last
    sorted_key, order = torch.sort(key, dim=1, stable=True)
    sample_of_pair = torch.arange(4 * HW, device=dev, dtype=torch.int64) // 4
    sample = sample_of_pair[order].to(torch.int32).contiguous()
    weight = torch.gather(weight.reshape(B, 4 * HW), 1, order).contiguous()
    bounds = torch.arange(HW + 1, device=dev, dtype=torch.int64).expand(B, HW + 1).contiguous()
    start = torch.searchsorted(sorted_key.contiguous(), bounds, side="left")
    return start.contiguous(), sample, weight


def affine_hpool_backward(grad_out, x, theta, argmax):
    B, C, H, W = x.shape
    HW = H * W
    grad_out = grad_out.contiguous()
    argmax = argmax.contiguous()
    theta = theta.contiguous()
    acc_t = torch_acc_dtype(x.dtype)
    ACC = acc_dtype(x.dtype)

    block_r, block_w = _row_blocks(C, H, W)
    n_rblocks = triton.cdiv(C * H, block_r)
    partial = torch.empty((B, n_rblocks, 6), device=x.device, dtype=acc_t)
    _affine_hpool_dtheta_kernel[(B, n_rblocks)](
        x, theta, grad_out, argmax, partial, C, H, W, n_rblocks, *x.stride(),
        ACC=ACC, BLOCK_R=block_r, BLOCK_W=block_w, num_warps=num_warps_for(block_r * block_w),
    )
    grad_theta = torch.empty((B, 2, 3), device=x.device, dtype=theta.dtype)
    _dtheta_reduce_kernel[(B,)](partial, grad_theta, n_rblocks, ACC=ACC, num_warps=1)

    start, sample, weight = _inverse_index(theta.to(acc_t), H, W)
    dx = torch.empty((B, C, H, W), device=x.device, dtype=x.dtype)
    block_c, block_p = _dx_blocks(C, HW)
    grid = (B, triton.cdiv(C, block_c), triton.cdiv(HW, block_p))
    _affine_hpool_dx_kernel[grid](
        grad_out, argmax, start, sample, weight, dx, C, H, W, 4 * HW,
        ACC=ACC, BLOCK_C=block_c, BLOCK_P=block_p, num_warps=num_warps_for(block_c * block_p),
    )
    return dx, grad_theta
