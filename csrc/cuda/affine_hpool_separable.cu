// affine_hpool_separable on CUDA: affine_hpool for a theta without rotation or shear
// (theta[b] = [[a, 0, e], [0, d, f]]; the entries theta[b,0,1], theta[b,1,0] are ignored, their
// gradient is 0). The resampled map is never written to memory.
//
// Math. Column w and row h of the output sample the input at (pixel units, as csrc/cuda/affine_hpool.cu)
//   ix_w = a (w - (W-1)/2) + (W/2)(e + 1) - 1/2,   iy_h = d (h - (H-1)/2) + (H/2)(f + 1) - 1/2,
// i.e. ((gx + 1) W - 1) / 2 of affine_grid / grid_sample (align_corners=False, zeros padding). The
// bilinear resampling factorises: per channel r = A_y X A_x^T with the banded matrices
//   A_y[h, y] = (1 - ty_h)[y == y0_h] + ty_h [y == y0_h + 1],  y0_h = floor(iy_h), ty_h = iy_h - y0_h
//   A_x[w, x] = (1 - tx_w)[x == x0_w] + tx_w [x == x0_w + 1]    (taps outside the map weigh 0)
//   out[b, c, h] = (1 / W) sum_w r[h, w] + max_w r[h, w],  argmax = first w of the max.
// Backward, g = dL/dout, a = argmax: dR[h, w] = g_h / W + g_h [w == a_h]. Then P = dR A_x is closed-form,
//   P[h, x] = (g_h / W) S[x] + g_h A_x[a_h, x],   S[x] = sum_w A_x[w, x]  (column sums of A_x),
// and dX = A_y^T P: dX[y, x] = sum_h A_y[h, y] P[h, x] over the h whose row taps include y (y0_h is
// monotone in h, so these form a range, listed per y once per block).
//   dtheta: dr/dix = (1-ty)(X[y0,x0+1] - X[y0,x0]) + ty(X[y0+1,x0+1] - X[y0+1,x0]), likewise dr/diy;
//   dtheta[b] = [[sum dR dr/dix u_w, 0, (W/2) sum dR dr/dix], [0, sum dR dr/diy v_h, (H/2) sum dR dr/diy]]
//   with u_w = w - (W-1)/2, v_h = h - (H-1)/2 (d ix / d a = u_w, d ix / d e = W/2, likewise for y).
//
// Layout. A block owns one b and up to 64 channels. Its threads first compute the row taps (H) and
// column taps (W) once, in shared memory: indices with taps outside the map replaced by H (row) or W
// (column), pointing at a zero border, and weights that are 0 for those taps. The channels are then
// processed in groups that fit in shared memory: each group's H x W maps are staged by one coalesced
// read of x (any strides; channel-fastest order for channels_last) into rows of an odd pitch, so that
// threads on consecutive rows hit different banks. Forward: a thread per output row (c, h) walks w in
// increasing order. Backward: a thread per row (c, h) accumulates dtheta (4 sums) and records g_h and
// the taps of a_h; then a thread per dx element (c, y, x) -- coalesced writes -- sums its range of h.
// Maps too large for shared memory are read from global memory instead (kSmem = false).
//
// Determinism without atomics: every dx element is written once, summed in increasing h; dtheta
// goes per thread in a fixed order, through a xor-shuffle tree, warps in order into one partial per
// block, and the blocks of each b in order in a second kernel.

#include "checks.h"
#include "common.cuh"

#include <torch/library.h>

#include <algorithm>
#include <climits>

namespace scstn_vcn {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarp;
constexpr int kChannelsPerBlock = 64;
// Dynamic shared memory per block, below the 48 KiB a block may use without opting in (the backward
// also has a small static array).
constexpr int64_t kDynSmem = kSmemBudget - 512;

struct Strides {
  int64_t b, c, h, w;
};

// The taps of index i along an axis of n pixels: pos = scale (i - (n-1)/2) + offset, the same
// expression (an explicit fma) as the general kernel, so rotation-free positions agree bitwise.
template <typename acc_t>
__device__ __forceinline__ void axis_taps(acc_t t_scale, acc_t t_shift, int i, int n, int& first, int& second,
                                          acc_t& w_first, acc_t& w_second) {
  const acc_t nf = static_cast<acc_t>(n), half = acc_t(0.5);
  const acc_t offset = half * nf * (t_shift + acc_t(1)) - half;
  const acc_t pos = fma(t_scale, static_cast<acc_t>(i) - half * (nf - acc_t(1)), offset);
  const acc_t f = floor(pos);
  const acc_t frac = pos - f;
  // Bounds tested on the float floor, before any int conversion: NaN or huge positions have no tap.
  const bool in0 = f >= acc_t(0) && f <= static_cast<acc_t>(n - 1);
  const bool in1 = f >= acc_t(-1) && f <= static_cast<acc_t>(n - 2);
  const int fi = (in0 || in1) ? static_cast<int>(f) : 0;
  first = in0 ? fi : n;  // n: the zero row / column
  second = in1 ? fi + 1 : n;
  w_first = in0 ? acc_t(1) - frac : acc_t(0);
  w_second = in1 ? frac : acc_t(0);
}

// Taps of one block in shared memory: rows (H) and columns (W).
template <typename acc_t>
struct Taps {
  acc_t *wy0, *wy1, *wx0, *wx1;
  int *ry0, *ry1, *cx0, *cx1;

  __device__ void compute(const acc_t* t, int H, int W) const {
    for (int i = threadIdx.x; i < H + W; i += blockDim.x) {
      if (i < H) {
        axis_taps(t[4], t[5], i, H, ry0[i], ry1[i], wy0[i], wy1[i]);
      } else {
        const int w = i - H;
        axis_taps(t[0], t[2], w, W, cx0[w], cx1[w], wx0[w], wx1[w]);
      }
    }
  }
};

// A channel's staged map (SmemMap, common.cuh) has H + 1 rows of `pitch` >= W + 1 values here; row H and
// column W are zero, so the out-of-map tap indices read 0 without a branch.

// The same read from global memory (any strides); tap index H or W reads 0.
template <typename scalar_t, typename acc_t>
struct GlobalMap {
  const scalar_t* p;
  int64_t s_h, s_w;
  int H, W;
  __device__ __forceinline__ acc_t operator()(int y, int x) const {
    return (y < H && x < W) ? static_cast<acc_t>(p[y * s_h + x * s_w]) : acc_t(0);
  }
};

// Zero border (row H, column W) of `slots` staged maps, each element written once; staging never
// overwrites it.
template <typename acc_t>
__device__ void zero_borders(acc_t* maps, int slots, int H, int W, int pitch) {
  const int plane = (H + 1) * pitch, per_slot = W + 1 + H;
  for (int i = threadIdx.x; i < slots * per_slot; i += blockDim.x) {
    const int slot = i / per_slot;
    const int j = i - slot * per_slot;
    acc_t* m = maps + slot * plane;
    if (j <= W) {
      m[H * pitch + j] = acc_t(0);  // row H, columns 0 .. W
    } else {
      m[(j - W - 1) * pitch + W] = acc_t(0);  // column W, rows 0 .. H - 1
    }
  }
}

// Stage channels c0 .. c0 + n - 1 of image b into the maps. Row-contiguous x: consecutive threads
// read consecutive pixels of a plane; channels-innermost x (channels_last): consecutive channels.
template <typename scalar_t, typename acc_t>
__device__ void stage_maps(const scalar_t* __restrict__ x, const Strides& st, int64_t b, int c0, int n, int H, int W,
                           int pitch, bool channels_inner, acc_t* maps) {
  const int HW = H * W, plane = (H + 1) * pitch;
  const scalar_t* base = x + b * st.b + static_cast<int64_t>(c0) * st.c;
  for (int e = threadIdx.x; e < n * HW; e += blockDim.x) {
    int slot, p;
    if (channels_inner) {
      p = e / n;
      slot = e - p * n;
    } else {
      slot = e / HW;
      p = e - slot * HW;
    }
    const int y = p / W, xx = p - y * W;
    const acc_t v = static_cast<acc_t>(base[slot * st.c + y * st.h + xx * st.w]);
    maps[slot * plane + y * pitch + xx] = v;
  }
}

template <typename acc_t, typename Map>
__device__ __forceinline__ void corners(const Map& map, int y0, int y1, int x0, int x1, acc_t& v00, acc_t& v01,
                                        acc_t& v10, acc_t& v11) {
  v00 = map(y0, x0);
  v01 = map(y0, x1);
  v10 = map(y1, x0);
  v11 = map(y1, x1);
}

// Where the channels c0 .. c0 + n - 1 of image b that a block is processing are read from: their staged
// maps (kSmem) or x itself. tap_values() gives the four tap values of channel c0 + slot.
template <typename scalar_t, typename acc_t, bool kSmem>
struct GroupSource {
  const acc_t* maps;
  int plane, pitch;
  const scalar_t* x;
  Strides st;
  int64_t b;
  int c0, H, W;

  __device__ __forceinline__ void tap_values(int slot, int y0, int y1, int x0, int x1, acc_t& v00, acc_t& v01,
                                             acc_t& v10, acc_t& v11) const {
    if constexpr (kSmem) {
      corners(SmemMap<acc_t>{maps + slot * plane, pitch}, y0, y1, x0, x1, v00, v01, v10, v11);
    } else {
      const scalar_t* p = x + b * st.b + static_cast<int64_t>(c0 + slot) * st.c;
      corners(GlobalMap<scalar_t, acc_t>{p, st.h, st.w, H, W}, y0, y1, x0, x1, v00, v01, v10, v11);
    }
  }
};

// Start on channels c0 .. c0 + n - 1: stage their maps (kSmem; the whole block takes part) and say
// where they are read from.
template <bool kSmem, typename scalar_t, typename acc_t>
__device__ __forceinline__ GroupSource<scalar_t, acc_t, kSmem> begin_group(const scalar_t* __restrict__ x,
                                                                           const Strides& st, int b, int c0, int n,
                                                                           int H, int W, int pitch, int plane,
                                                                           bool channels_inner, acc_t* maps) {
  if constexpr (kSmem) {
    stage_maps(x, st, b, c0, n, H, W, pitch, channels_inner, maps);
    __syncthreads();
  }
  return GroupSource<scalar_t, acc_t, kSmem>{maps, plane, pitch, x, st, b, c0, H, W};
}

// ---------------------------------------------------------------------------------------------
// Forward

template <typename scalar_t, typename acc_t, bool kSmem>
__global__ void __launch_bounds__(kThreads)
    separable_forward_kernel(const scalar_t* __restrict__ x, Strides st, const acc_t* __restrict__ theta,
                             scalar_t* __restrict__ out, int32_t* __restrict__ argmax, int C, int H, int W, int nchunks,
                             int group, int pitch, bool channels_inner) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int b = blockIdx.x / nchunks;
  const int chunk = blockIdx.x - b * nchunks;
  // acc_t: wy0, wy1 (H), wx0, wx1 (W), maps; then int: ry0, ry1 (H), cx0, cx1 (W).
  acc_t* a = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* maps = a + 2 * H + 2 * W;
  const int plane = (H + 1) * pitch;
  int* ip = reinterpret_cast<int*>(maps + (kSmem ? static_cast<int64_t>(group) * plane : 0));
  const Taps<acc_t> taps{a, a + H, a + 2 * H, a + 2 * H + W, ip, ip + H, ip + 2 * H, ip + 2 * H + W};
  taps.compute(theta + static_cast<int64_t>(b) * 6, H, W);
  if constexpr (kSmem) zero_borders(maps, group, H, W, pitch);
  __syncthreads();

  const acc_t Wf = static_cast<acc_t>(W);
  const int c_end = min(C, (chunk + 1) * kChannelsPerBlock);
  for (int c0 = chunk * kChannelsPerBlock; c0 < c_end; c0 += group) {
    const int n = min(group, c_end - c0);
    const auto src = begin_group<kSmem>(x, st, b, c0, n, H, W, pitch, plane, channels_inner, maps);
    for (int row = threadIdx.x; row < n * H; row += blockDim.x) {
      const int slot = row / H, h = row - slot * H;
      const int y0 = taps.ry0[h], y1 = taps.ry1[h];
      const acc_t wy0 = taps.wy0[h], wy1 = taps.wy1[h];
      acc_t sum = acc_t(0), best = neg_inf<acc_t>();
      int arg = 0;
      for (int w = 0; w < W; ++w) {
        const int x0 = taps.cx0[w], x1 = taps.cx1[w];
        const acc_t wx0 = taps.wx0[w], wx1 = taps.wx1[w];
        acc_t v00, v01, v10, v11;
        src.tap_values(slot, y0, y1, x0, x1, v00, v01, v10, v11);
        const acc_t r = wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11);
        sum += r;
        if (beats(r, w, best, arg)) {  // increasing w: keeps the first maximum
          best = r;
          arg = w;
        }
      }
      const int64_t o = (static_cast<int64_t>(b) * C + c0 + slot) * H + h;
      out[o] = static_cast<scalar_t>(sum / Wf + best);
      argmax[o] = arg;
    }
    if constexpr (kSmem) __syncthreads();  // the maps are overwritten by the next group
  }
}

// ---------------------------------------------------------------------------------------------
// Backward

template <typename scalar_t, typename acc_t, bool kSmem>
__global__ void __launch_bounds__(kThreads)
    separable_backward_kernel(const scalar_t* __restrict__ x, Strides st, const acc_t* __restrict__ theta,
                              const acc_t* __restrict__ grad_out, const int32_t* __restrict__ argmax,
                              scalar_t* __restrict__ dx, acc_t* __restrict__ partial, int C, int H, int W, int nchunks,
                              int group, int pitch, bool channels_inner) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ acc_t warp_sums[kWarps][4];
  const int b = blockIdx.x / nchunks;
  const int chunk = blockIdx.x - b * nchunks;
  const int HW = H * W;
  const int rows = group * H;
  // acc_t: wy0, wy1 (H), wx0, wx1, colsum (W), row_g, row_w0, row_w1 (group H), maps;
  // then int: ry0, ry1, hlo, hhi (H), cx0, cx1 (W), row_x0, row_x1 (group H).
  acc_t* a = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* colsum = a + 2 * H + 2 * W;
  acc_t* row_g = colsum + W;
  acc_t* row_w0 = row_g + rows;
  acc_t* row_w1 = row_w0 + rows;
  acc_t* maps = row_w1 + rows;
  const int plane = (H + 1) * pitch;
  int* ip = reinterpret_cast<int*>(maps + (kSmem ? static_cast<int64_t>(group) * plane : 0));
  int* hlo = ip + 2 * H;
  int* hhi = hlo + H;
  const Taps<acc_t> taps{a, a + H, a + 2 * H, a + 2 * H + W, ip, ip + H, hhi + H, hhi + H + W};
  int* row_x0 = hhi + H + 2 * W;
  int* row_x1 = row_x0 + rows;

  taps.compute(theta + static_cast<int64_t>(b) * 6, H, W);
  if constexpr (kSmem) zero_borders(maps, group, H, W, pitch);
  __syncthreads();
  // Column sums of A_x, and per input row y the range of h whose taps include y (empty: lo > hi).
  for (int i = threadIdx.x; i < W + H; i += blockDim.x) {
    if (i < W) {
      acc_t s = acc_t(0);
      for (int w = 0; w < W; ++w) {
        if (taps.cx0[w] == i) s += taps.wx0[w];
        if (taps.cx1[w] == i) s += taps.wx1[w];
      }
      colsum[i] = s;
    } else {
      const int y = i - W;
      int lo = H, hi = -1;
      for (int h = 0; h < H; ++h) {
        if (taps.ry0[h] == y || taps.ry1[h] == y) {
          lo = min(lo, h);
          hi = h;
        }
      }
      hlo[y] = lo;
      hhi[y] = hi;
    }
  }
  __syncthreads();

  const acc_t Wf = static_cast<acc_t>(W), Hf = static_cast<acc_t>(H), half = acc_t(0.5);
  const acc_t u_center = half * (Wf - acc_t(1)), v_center = half * (Hf - acc_t(1));
  // dtheta sums: (sum ex u, sum ex, sum ey v, sum ey) with ex = dR dr/dix, ey = dR dr/diy.
  acc_t sxu = 0, sx = 0, syv = 0, sy = 0;
  const int c_end = min(C, (chunk + 1) * kChannelsPerBlock);
  for (int c0 = chunk * kChannelsPerBlock; c0 < c_end; c0 += group) {
    const int n = min(group, c_end - c0);
    const auto src = begin_group<kSmem>(x, st, b, c0, n, H, W, pitch, plane, channels_inner, maps);
    // dtheta, a thread per row (c, h), samples in increasing w; and the row's g and argmax taps.
    for (int row = threadIdx.x; row < n * H; row += blockDim.x) {
      const int slot = row / H, h = row - slot * H;
      const int64_t grow = (static_cast<int64_t>(b) * C + c0 + slot) * H + h;
      const acc_t g = grad_out[grow];
      const acc_t g_mean = g / Wf;
      const int am = argmax[grow];
      const int y0 = taps.ry0[h], y1 = taps.ry1[h];
      const acc_t wy0 = taps.wy0[h], wy1 = taps.wy1[h];
      acc_t rsx = 0, rsxu = 0, rsy = 0;
      for (int w = 0; w < W; ++w) {
        const int x0 = taps.cx0[w], x1 = taps.cx1[w];
        const acc_t wx0 = taps.wx0[w], wx1 = taps.wx1[w];
        acc_t v00, v01, v10, v11;
        src.tap_values(slot, y0, y1, x0, x1, v00, v01, v10, v11);
        // Out-of-map taps read 0 with weight 0, so these are torch's one-sided zero-padding derivatives.
        const acc_t gix = wy0 * (v01 - v00) + wy1 * (v11 - v10);
        const acc_t giy = wx0 * (v10 - v00) + wx1 * (v11 - v01);
        const acc_t dr = w == am ? g_mean + g : g_mean;
        const acc_t ex = dr * gix;
        rsx += ex;
        rsxu += ex * (static_cast<acc_t>(w) - u_center);
        rsy += dr * giy;
      }
      sx += rsx;
      sxu += rsxu;
      sy += rsy;
      syv += rsy * (static_cast<acc_t>(h) - v_center);
      // A_x[a, :] of the row (no max term for an argmax outside [0, W), which the forward never gives).
      const bool a_ok = am >= 0 && am < W;
      row_g[row] = g;
      row_x0[row] = a_ok ? taps.cx0[am] : W;
      row_x1[row] = a_ok ? taps.cx1[am] : W;
      row_w0[row] = a_ok ? taps.wx0[am] : acc_t(0);
      row_w1[row] = a_ok ? taps.wx1[am] : acc_t(0);
    }
    __syncthreads();

    // dx = A_y^T P, a thread per element (c, y, x), the planes of the group written contiguously.
    scalar_t* d = dx + (static_cast<int64_t>(b) * C + c0) * HW;
    for (int e = threadIdx.x; e < n * HW; e += blockDim.x) {
      const int slot = e / HW, p = e - slot * HW;
      const int y = p / W, xx = p - y * W;
      const acc_t s_mean = colsum[xx] / Wf;
      const int h_end = hhi[y];
      acc_t acc = acc_t(0);
      for (int h = hlo[y]; h <= h_end; ++h) {
        const acc_t wy = (taps.ry0[h] == y ? taps.wy0[h] : acc_t(0)) + (taps.ry1[h] == y ? taps.wy1[h] : acc_t(0));
        const int row = slot * H + h;
        const acc_t ax = (row_x0[row] == xx ? row_w0[row] : acc_t(0)) + (row_x1[row] == xx ? row_w1[row] : acc_t(0));
        const acc_t g = row_g[row];
        acc += wy * (g * s_mean + g * ax);  // A_y[h, y] P[h, x]
      }
      d[e] = static_cast<scalar_t>(acc);
    }
    __syncthreads();  // the maps and row arrays are overwritten by the next group
  }

  const acc_t sums[4] = {sxu, sx, syv, sy};
  block_partial_sums<4>(sums, warp_sums, kWarps, partial + (static_cast<int64_t>(b) * nchunks + chunk) * 4);
}

// grad_theta[b] = [[s0, 0, (W/2) s1], [0, s2, (H/2) s3]] with s_k the sum over the blocks of b, in block
// order, of partial slot k; the rotation / shear entries get 0.
struct SeparableThetaLayout {
  static constexpr int kSlots = 4;
  __device__ static int slot(int k) { return k == 1 || k == 3 ? -1 : k == 0 ? 0 : k == 2 ? 1 : k - 2; }
  template <typename acc_t>
  __device__ static acc_t factor(int k, int H, int W) {
    if (k == 2) return acc_t(0.5) * static_cast<acc_t>(W);
    if (k == 5) return acc_t(0.5) * static_cast<acc_t>(H);
    return acc_t(1);
  }
};

// ---------------------------------------------------------------------------------------------
// Host side

void check_x_theta(const at::Tensor& x, const at::Tensor& theta) {
  check_float(x, "x");
  check_dim(x, 4, "x", "(B, C, H, W)");
  check_cuda(x, "x");
  check_float(theta, "theta");
  check_dim(theta, 3, "theta", "(B, 2, 3)");
  check_shape(theta, {x.size(0), 2, 3}, "theta");
  check_same_device(x, "x", theta, "theta");
  check_dtype(theta, compute_type(x.scalar_type()), "theta", "the compute dtype of x");
  TORCH_CHECK(x.size(1) <= INT_MAX && x.size(2) * x.size(3) <= INT_MAX / 2,
              "x: C and 2 * H * W must fit in int32, got shape ", x.sizes());
}

int map_pitch(int64_t W) { return static_cast<int>((W + 1) | 1); }  // >= W + 1 (zero column), odd

// The shared-memory plan of a launch: channels per group, and whether the maps are staged.
struct Plan {
  int group = 0;
  bool smem_maps = false;
  int64_t bytes = 0;
};

// fixed: bytes of the per-block tap arrays; per_row: bytes per (c, h) row; per_map: bytes of one
// staged map. Channels per group as many as fit (maps first), split evenly over the 64-channel chunk.
Plan plan_smem(int64_t C, int64_t H, int64_t fixed, int64_t per_row, int64_t per_map, const at::Tensor& x,
               const char* op) {
  const int64_t chunk = std::min<int64_t>(C, kChannelsPerBlock);
  Plan plan;
  int64_t per_channel = H * per_row + per_map;
  int64_t fit = (kDynSmem - fixed) / per_channel;
  plan.smem_maps = fit >= 1;
  if (!plan.smem_maps) {
    per_channel = H * per_row;
    fit = per_channel > 0 ? (kDynSmem - fixed) / per_channel : chunk;
  }
  TORCH_CHECK(fixed <= kDynSmem && fit >= 1, "x: H and W too large for the CUDA ", op, " (its per-row and per-column ",
              "tables need more than ", kDynSmem, " bytes of shared memory), got shape ", x.sizes());
  fit = std::min(fit, chunk);
  const int64_t groups = ceil_div(chunk, fit);
  plan.group = static_cast<int>(ceil_div(chunk, groups));
  plan.bytes = fixed + plan.group * (H * per_row + (plan.smem_maps ? per_map : 0));
  return plan;
}

// What the forward and the backward launch both derive from x: blocks per image, the staged maps' pitch,
// x's strides and whether to stage channel-fastest (channels innermost, as in channels_last).
struct LaunchShape {
  int64_t nchunks;
  int pitch;
  Strides st;
  bool inner;
};

LaunchShape launch_shape(const at::Tensor& x) {
  const int64_t B = x.size(0), C = x.size(1), W = x.size(3);
  const int64_t nchunks = ceil_div(C, kChannelsPerBlock);
  TORCH_CHECK(B * nchunks <= INT_MAX, "x: batch too large for the CUDA affine_hpool_separable grid, got shape ",
              x.sizes());
  return {nchunks, map_pitch(W), Strides{x.stride(0), x.stride(1), x.stride(2), x.stride(3)},
          C > 1 && x.stride(1) < x.stride(3)};
}

std::tuple<at::Tensor, at::Tensor> affine_hpool_separable_cuda(const at::Tensor& x, const at::Tensor& theta) {
  check_x_theta(x, theta);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor tc = theta.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor out = at::empty({B, C, H}, x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor argmax = at::empty({B, C, H}, x.options().dtype(at::kInt).memory_format(at::MemoryFormat::Contiguous));
  const LaunchShape ls = launch_shape(x);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scstn_vcn::affine_hpool_separable", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const int64_t acc = sizeof(acc_t);
    const Plan plan =
        plan_smem(C, H, (2 * H + 2 * W) * (acc + 4), 0, (H + 1) * ls.pitch * acc, x, "affine_hpool_separable");
    const unsigned grid = static_cast<unsigned>(B * ls.nchunks);
    const auto kernel = plan.smem_maps ? separable_forward_kernel<scalar_t, acc_t, true>
                                       : separable_forward_kernel<scalar_t, acc_t, false>;
    kernel<<<grid, kThreads, static_cast<size_t>(plan.bytes), stream>>>(
        x.const_data_ptr<scalar_t>(), ls.st, tc.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(),
        argmax.mutable_data_ptr<int32_t>(), static_cast<int>(C), static_cast<int>(H), static_cast<int>(W),
        static_cast<int>(ls.nchunks), plan.group, ls.pitch, ls.inner);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, argmax};
}

std::tuple<at::Tensor, at::Tensor> affine_hpool_separable_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                                        const at::Tensor& theta,
                                                                        const at::Tensor& argmax) {
  check_x_theta(x, theta);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  check_float(grad_out, "grad_out");
  check_shape(grad_out, {B, C, H}, "grad_out");
  check_same_device(x, "x", grad_out, "grad_out");
  check_dtype(argmax, at::kInt, "argmax", "the index output of affine_hpool_separable");
  check_shape(argmax, {B, C, H}, "argmax");
  check_same_device(x, "x", argmax, "argmax");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor tc = theta.contiguous();
  const at::Tensor g = grad_out.to(tc.scalar_type()).contiguous();  // (B, C, H): 1/W of x, in the compute dtype
  const at::Tensor am = argmax.contiguous();
  at::Tensor dx = at::empty({B, C, H, W}, x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_theta = at::empty({B, 2, 3}, tc.options());
  const LaunchShape ls = launch_shape(x);
  at::Tensor partial = at::empty({B, ls.nchunks, 4}, tc.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "scstn_vcn::affine_hpool_separable_backward", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        const int64_t acc = sizeof(acc_t);
        const int64_t fixed = (2 * H + 3 * W) * acc + (4 * H + 2 * W) * 4;
        const Plan plan =
            plan_smem(C, H, fixed, 3 * acc + 2 * 4, (H + 1) * ls.pitch * acc, x, "affine_hpool_separable_backward");
        const unsigned grid = static_cast<unsigned>(B * ls.nchunks);
        const auto kernel = plan.smem_maps ? separable_backward_kernel<scalar_t, acc_t, true>
                                           : separable_backward_kernel<scalar_t, acc_t, false>;
        kernel<<<grid, kThreads, static_cast<size_t>(plan.bytes), stream>>>(
            x.const_data_ptr<scalar_t>(), ls.st, tc.const_data_ptr<acc_t>(), g.const_data_ptr<acc_t>(),
            am.const_data_ptr<int32_t>(), dx.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(),
            static_cast<int>(C), static_cast<int>(H), static_cast<int>(W), static_cast<int>(ls.nchunks), plan.group,
            ls.pitch, ls.inner);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        launch_theta_finish<acc_t, SeparableThetaLayout>(partial, grad_theta, B, ls.nchunks, H, W, stream);
      });
  return {dx, grad_theta};
}

}  // namespace
}  // namespace cuda
}  // namespace scstn_vcn

TORCH_LIBRARY_IMPL(scstn_vcn, CUDA, m) {
  m.impl("affine_hpool_separable", &scstn_vcn::cuda::affine_hpool_separable_cuda);
  m.impl("affine_hpool_separable_backward", &scstn_vcn::cuda::affine_hpool_separable_backward_cuda);
}
