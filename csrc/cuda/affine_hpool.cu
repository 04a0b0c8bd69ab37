// affine_hpool on CUDA: affine bilinear resampling of x (grid_sample, zeros padding,
// align_corners=False) fused with horizontal mean + max pooling. The resampled map r is never
// written to memory.
//
// Math. For output pixel (h, w) of an H x W map and theta[b] = [[t00, t01, t02], [t10, t11, t12]],
// with u = w - (W - 1) / 2 and v = h - (H - 1) / 2 (the normalised affine_grid coordinates times
// W/2 and H/2), the sample position in input pixels is
//   ix = t00 u + t01 (W / H) v + (W / 2)(t02 + 1) - 1/2
//   iy = t10 (H / W) u + t11 v + (H / 2)(t12 + 1) - 1/2
// which is ((gx + 1) W - 1) / 2 for gx = theta[0] . (u_n, v_n, 1) of affine_grid, rewritten so the
// identity transform lands exactly on pixel centres. With x0 = floor(ix), y0 = floor(iy),
// ax = ix - x0, ay = iy - y0 and X = 0 outside the map:
//   r(h, w) = (1-ay)((1-ax) X[y0, x0] + ax X[y0, x0+1]) + ay((1-ax) X[y0+1, x0] + ax X[y0+1, x0+1])
//   out[b, c, h] = (1 / W) sum_w r(h, w) + max_w r(h, w),  argmax = first w of the max.
// Backward, g = dL/dout, a = argmax:
//   dr(h, w) = g / W + g [w == a]
//   dx[y, x] = sum over the samples s with (y, x) among their 4 neighbours of dr(s) * weight_s(y, x)
//   dr/dix = (1-ay)(X[y0,x0+1] - X[y0,x0]) + ay(X[y0+1,x0+1] - X[y0+1,x0])       (as torch's
//   dr/diy = (1-ax)(X[y0+1,x0] - X[y0,x0]) + ax(X[y0+1,x0+1] - X[y0,x0+1])        grid_sample backward)
//   dtheta[0] = sum dr dr/dix (u, (W/H) v, W/2),   dtheta[1] = sum dr dr/diy ((H/W) u, v, H/2)
//
// Layout. A block owns one b and 64 channels; each warp takes one channel at a time, stages its
// H x W map in shared memory (one coalesced read of x, rows padded to an odd pitch so that the
// lanes -- one output row each -- hit distinct banks) and samples from there. Maps too large for
// shared memory are sampled straight from global memory (L1/L2 cached) instead.
//
// Determinism without atomics:
//  * dtheta: per-lane sums in a fixed order, an xor-shuffle tree, warps added in order into one
//    partial per block, and the blocks of each b added in order by a second kernel.
//  * dx is gathered, not scattered. The sample positions depend on (b, h, w) only, so before the
//    backward kernel the transposed sampling pattern of each b is built once: for every input pixel
//    the list of (output pixel, bilinear weight) pairs that read it, in increasing sample order
//    (keys sorted with a stable sort, so the order is fixed). Each dx[b, c, y, x] is then the sum
//    over its list in that order: every input pixel's gradient is written by one lane, once,
//    which works for any theta, rotations included. The lists of one b (its in-map entries, at
//    most 4 H W) are staged in shared memory when they fit, otherwise read from global memory.

#include "checks.h"
#include "common.cuh"

#include <torch/library.h>

#include <climits>

namespace scstn_vcn {
namespace cuda {
namespace {

constexpr int kChannelsPerBlock = 64;
constexpr int kMaxWarps = 8;
// Dynamic shared memory per block, below the 48 KiB a block may use without opting in (the
// backward kernel also has a small static array).
constexpr int64_t kDynSmem = kSmemBudget - 1024;

// The affine map of one b in pixel units: ix = kxu u + kxv v + cx, iy = kyu u + kyv v + cy.
template <typename acc_t>
struct Geometry {
  acc_t kxu, kxv, cx, kyu, kyv, cy, u0, v0;
  __device__ Geometry(const acc_t* t, int H, int W) {
    const acc_t Wf = static_cast<acc_t>(W), Hf = static_cast<acc_t>(H);
    const acc_t half = acc_t(0.5);
    kxu = t[0];
    kxv = t[1] * Wf / Hf;
    cx = half * Wf * (t[2] + acc_t(1)) - half;
    kyu = t[3] * Hf / Wf;
    kyv = t[4];
    cy = half * Hf * (t[5] + acc_t(1)) - half;
    u0 = half * (Wf - acc_t(1));
    v0 = half * (Hf - acc_t(1));
  }
  __device__ __forceinline__ acc_t u(int w) const { return static_cast<acc_t>(w) - u0; }
  __device__ __forceinline__ acc_t v(int h) const { return static_cast<acc_t>(h) - v0; }
  // Explicit fma so that every kernel computes bitwise the same positions.
  __device__ __forceinline__ acc_t row_x(acc_t vh) const { return fma(kxv, vh, cx); }
  __device__ __forceinline__ acc_t row_y(acc_t vh) const { return fma(kyv, vh, cy); }
  __device__ __forceinline__ acc_t ix(acc_t uw, acc_t rx) const { return fma(kxu, uw, rx); }
  __device__ __forceinline__ acc_t iy(acc_t uw, acc_t ry) const { return fma(kyu, uw, ry); }
};

// The bilinear footprint of a sample: top-left neighbour, fractions, and which neighbours are in
// the map. The bounds are tested on the floating floor values, so NaN or huge positions simply
// have no neighbour inside (torch then samples 0, and so do we), before any int conversion.
template <typename acc_t>
struct Footprint {
  int xi, yi;
  acc_t ax, ay;
  bool x0in, x1in, y0in, y1in;
  __device__ __forceinline__ Footprint(acc_t ix, acc_t iy, int H, int W) {
    const acc_t x0f = floor(ix), y0f = floor(iy);
    ax = ix - x0f;
    ay = iy - y0f;
    x0in = x0f >= acc_t(0) && x0f <= static_cast<acc_t>(W - 1);
    x1in = x0f >= acc_t(-1) && x0f <= static_cast<acc_t>(W - 2);
    y0in = y0f >= acc_t(0) && y0f <= static_cast<acc_t>(H - 1);
    y1in = y0f >= acc_t(-1) && y0f <= static_cast<acc_t>(H - 2);
    xi = (x0in || x1in) ? static_cast<int>(x0f) : 0;
    yi = (y0in || y1in) ? static_cast<int>(y0f) : 0;
  }
  __device__ __forceinline__ bool any() const { return (x0in || x1in) && (y0in || y1in); }
};

template <typename scalar_t, typename acc_t>
struct GlobalMap {
  const scalar_t* p;
  int W;
  __device__ __forceinline__ acc_t operator()(int y, int x) const {
    return static_cast<acc_t>(p[static_cast<int64_t>(y) * W + x]);
  }
};

// r at (ix, iy); with kGrad also dr/dix and dr/diy. Neighbours outside the map count as 0, and a
// sample with no neighbour inside is 0 with zero gradient (its fractions may be NaN).
template <bool kGrad, typename acc_t, typename Map>
__device__ __forceinline__ acc_t bilinear(const Map& map, acc_t ix, acc_t iy, int H, int W, acc_t& gix, acc_t& giy) {
  const Footprint<acc_t> f(ix, iy, H, W);
  if (!f.any()) {
    if (kGrad) gix = giy = acc_t(0);
    return acc_t(0);
  }
  const acc_t v00 = (f.y0in && f.x0in) ? map(f.yi, f.xi) : acc_t(0);
  const acc_t v01 = (f.y0in && f.x1in) ? map(f.yi, f.xi + 1) : acc_t(0);
  const acc_t v10 = (f.y1in && f.x0in) ? map(f.yi + 1, f.xi) : acc_t(0);
  const acc_t v11 = (f.y1in && f.x1in) ? map(f.yi + 1, f.xi + 1) : acc_t(0);
  const acc_t bx = acc_t(1) - f.ax, by = acc_t(1) - f.ay;
  if (kGrad) {
    gix = by * (v01 - v00) + f.ay * (v11 - v10);
    giy = bx * (v10 - v00) + f.ax * (v11 - v01);
  }
  return by * (bx * v00 + f.ax * v01) + f.ay * (bx * v10 + f.ax * v11);
}

// Copy one channel's H x W map (contiguous) into shared memory rows of `pitch` elements.
// h = i / W through a float reciprocal: exact here because staged maps have far fewer than 2^22
// pixels (the error of (i + 1/2) / W stays below its 1/(2W) distance to an integer).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage_map(const scalar_t* __restrict__ src, acc_t* map, int H, int W, int pitch,
                                          int lane) {
  const int HW = H * W;
  const float inv_w = 1.0f / static_cast<float>(W);
  for (int i = lane; i < HW; i += kWarp) {
    const int h = static_cast<int>((static_cast<float>(i) + 0.5f) * inv_w);
    const int w = i - h * W;
    map[h * pitch + w] = static_cast<acc_t>(src[i]);
  }
}

// ---------------------------------------------------------------------------------------------
// Forward

template <typename scalar_t, typename acc_t, bool kSmem>
__global__ void __launch_bounds__(kMaxWarps* kWarp)
    affine_hpool_forward_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ theta,
                                scalar_t* __restrict__ out, int32_t* __restrict__ argmax, int C, int H, int W,
                                int nchunks, int pitch) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, nwarps = blockDim.x / kWarp;
  const int b = blockIdx.x / nchunks;
  const int chunk = blockIdx.x - b * nchunks;
  const Geometry<acc_t> geo(theta + static_cast<int64_t>(b) * 6, H, W);
  const int HW = H * W;
  acc_t* map = reinterpret_cast<acc_t*>(smem_raw) + static_cast<int64_t>(warp) * H * pitch;
  const int c_end = min(C, (chunk + 1) * kChannelsPerBlock);
  const acc_t Wf = static_cast<acc_t>(W);

  for (int c = chunk * kChannelsPerBlock + warp; c < c_end; c += nwarps) {
    const int64_t plane = static_cast<int64_t>(b) * C + c;
    const scalar_t* src = x + plane * HW;
    if constexpr (kSmem) {
      stage_map(src, map, H, W, pitch, lane);
      __syncwarp();
    }
    for (int h = lane; h < H; h += kWarp) {
      const acc_t vh = geo.v(h);
      const acc_t rx = geo.row_x(vh), ry = geo.row_y(vh);
      acc_t sum = acc_t(0), best = neg_inf<acc_t>();
      int arg = 0;
      for (int w = 0; w < W; ++w) {
        const acc_t uw = geo.u(w);
        const acc_t ix = geo.ix(uw, rx), iy = geo.iy(uw, ry);
        acc_t unused_x, unused_y;
        acc_t r;
        if constexpr (kSmem) {
          r = bilinear<false>(SmemMap<acc_t>{map, pitch}, ix, iy, H, W, unused_x, unused_y);
        } else {
          r = bilinear<false>(GlobalMap<scalar_t, acc_t>{src, W}, ix, iy, H, W, unused_x, unused_y);
        }
        sum += r;
        if (beats(r, w, best, arg)) {  // increasing w: keeps the first maximum
          best = r;
          arg = w;
        }
      }
      out[plane * H + h] = static_cast<scalar_t>(sum / Wf + best);
      argmax[plane * H + h] = arg;
    }
    if constexpr (kSmem) __syncwarp();  // the map is overwritten by the next channel
  }
}

// ---------------------------------------------------------------------------------------------
// The transposed sampling pattern of each b (shared by all channels): N = 4 H W entries.

// key[b, 4 s + k] = input pixel y * W + x of neighbour k of sample s (HW when outside the map),
// weight[b, 4 s + k] = its bilinear weight.
template <typename acc_t>
__global__ void affine_pattern_keys_kernel(const acc_t* __restrict__ theta, int32_t* __restrict__ keys,
                                           acc_t* __restrict__ weights, int64_t total, int H, int W) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int HW = H * W;
  const int64_t b = idx / HW;
  const int s = static_cast<int>(idx - b * HW);
  const int h = s / W, w = s - h * W;
  const Geometry<acc_t> geo(theta + b * 6, H, W);
  const acc_t vh = geo.v(h), uw = geo.u(w);
  const acc_t ix = geo.ix(uw, geo.row_x(vh)), iy = geo.iy(uw, geo.row_y(vh));
  const Footprint<acc_t> f(ix, iy, H, W);
  const bool any = f.any();
  const acc_t bx = acc_t(1) - f.ax, by = acc_t(1) - f.ay;
  const bool inside[4] = {any && f.y0in && f.x0in, any && f.y0in && f.x1in, any && f.y1in && f.x0in,
                          any && f.y1in && f.x1in};
  const acc_t wk[4] = {by * bx, by * f.ax, f.ay * bx, f.ay * f.ax};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int y = f.yi + (k >> 1), xx = f.xi + (k & 1);
    keys[idx * 4 + k] = inside[k] ? y * W + xx : HW;
    weights[idx * 4 + k] = inside[k] ? wk[k] : acc_t(0);
  }
}

// From the stably sorted keys: offsets[b, p] = first entry of pixel p (offsets[b, HW] = the number
// of entries inside the map), and per entry the packed output pixel (h << 16 | w) and its weight.
template <typename acc_t>
__global__ void affine_pattern_pack_kernel(const int32_t* __restrict__ sorted_keys, const int64_t* __restrict__ order,
                                           const acc_t* __restrict__ weights, uint32_t* __restrict__ entry_pos,
                                           acc_t* __restrict__ entry_weight, int32_t* __restrict__ offsets,
                                           int64_t total, int HW, int W) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int N = 4 * HW;
  const int64_t b = idx / (N + 1);
  const int i = static_cast<int>(idx - b * (N + 1));
  const int32_t* kb = sorted_keys + b * N;
  const int prev = i == 0 ? -1 : kb[i - 1];
  const int cur = i == N ? HW : kb[i];
  // Keys are non-decreasing, so every p in [0, HW] lies in exactly one (prev, cur] range.
  for (int p = prev + 1; p <= cur; ++p) offsets[b * (HW + 1) + p] = i;
  if (i < N && cur < HW) {
    const int64_t e = order[b * N + i];
    const int s = static_cast<int>(e >> 2);
    const int h = s / W, w = s - h * W;
    entry_pos[b * N + i] = (static_cast<uint32_t>(h) << 16) | static_cast<uint32_t>(w);
    entry_weight[b * N + i] = weights[b * N + e];
  }
}

// ---------------------------------------------------------------------------------------------
// Backward

template <typename scalar_t, typename acc_t, bool kSmem>
__global__ void __launch_bounds__(kMaxWarps* kWarp)
    affine_hpool_backward_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ theta,
                                 const acc_t* __restrict__ grad_out, const int32_t* __restrict__ argmax,
                                 const uint32_t* __restrict__ entry_pos_g, const acc_t* __restrict__ entry_weight_g,
                                 const int32_t* __restrict__ offsets_g, bool pattern_in_smem, scalar_t* __restrict__ dx,
                                 acc_t* __restrict__ partial, int C, int H, int W, int nchunks, int pitch) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ acc_t warp_sums[kMaxWarps][6];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, nwarps = blockDim.x / kWarp;
  const int b = blockIdx.x / nchunks;
  const int chunk = blockIdx.x - b * nchunks;
  const int HW = H * W, N = 4 * HW;
  const Geometry<acc_t> geo(theta + static_cast<int64_t>(b) * 6, H, W);
  const acc_t Wf = static_cast<acc_t>(W);

  // Shared memory: [pattern weights (N) | per-warp maps (H pitch) and row gradients (H)] in acc_t,
  // then [pattern offsets (HW + 1) | pattern positions (N) | per-warp row argmax (H)] in 32 bits.
  const int64_t pat_n = pattern_in_smem ? N : 0;
  const int64_t warp_acc = kSmem ? static_cast<int64_t>(H) * pitch + H : 0;
  acc_t* s_weight = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* s_warp = s_weight + pat_n + warp * warp_acc;
  int32_t* s_off = reinterpret_cast<int32_t*>(s_weight + pat_n + nwarps * warp_acc);
  uint32_t* s_pos = reinterpret_cast<uint32_t*>(s_off + (pattern_in_smem ? HW + 1 : 0));
  int32_t* s_arg = reinterpret_cast<int32_t*>(s_pos + pat_n) + (kSmem ? warp * H : 0);

  const uint32_t* pos = entry_pos_g + static_cast<int64_t>(b) * N;
  const acc_t* wgt = entry_weight_g + static_cast<int64_t>(b) * N;
  const int32_t* off = offsets_g + static_cast<int64_t>(b) * (HW + 1);
  if (pattern_in_smem) {
    // Only the in-map entries [0, off[HW]) were written by the pack kernel (the rest of the N slots
    // is uninitialised memory, and no list reaches it): stage exactly those.
    const int n_inside = off[HW];
    for (int i = threadIdx.x; i < n_inside; i += blockDim.x) {
      s_weight[i] = wgt[i];
      s_pos[i] = pos[i];
    }
    for (int i = threadIdx.x; i <= HW; i += blockDim.x) s_off[i] = off[i];
    __syncthreads();
    pos = s_pos;
    wgt = s_weight;
    off = s_off;
  }

  // dtheta sums in theta's layout: (sum ex u, sum ex v, sum ex, sum ey u, sum ey v, sum ey),
  // ex = dr dr/dix, ey = dr dr/diy; the constant factors are applied by the finishing kernel.
  acc_t sxu = 0, sxv = 0, sx = 0, syu = 0, syv = 0, sy = 0;
  const int c_end = min(C, (chunk + 1) * kChannelsPerBlock);
  for (int c = chunk * kChannelsPerBlock + warp; c < c_end; c += nwarps) {
    const int64_t plane = static_cast<int64_t>(b) * C + c;
    const scalar_t* src = x + plane * HW;
    const acc_t* g_row;
    const int32_t* a_row;
    acc_t* map = s_warp;
    if constexpr (kSmem) {
      acc_t* s_g = s_warp + static_cast<int64_t>(H) * pitch;
      stage_map(src, map, H, W, pitch, lane);
      for (int h = lane; h < H; h += kWarp) {
        s_g[h] = grad_out[plane * H + h];
        s_arg[h] = argmax[plane * H + h];
      }
      __syncwarp();
      g_row = s_g;
      a_row = s_arg;
    } else {
      g_row = grad_out + plane * H;
      a_row = argmax + plane * H;
    }

    // dtheta: lane per output row, samples in increasing w.
    for (int h = lane; h < H; h += kWarp) {
      const acc_t g = g_row[h];
      const acc_t g_mean = g / Wf;
      const int a = a_row[h];
      const acc_t vh = geo.v(h);
      const acc_t rx = geo.row_x(vh), ry = geo.row_y(vh);
      acc_t rsx = 0, rsxu = 0, rsy = 0, rsyu = 0;
      for (int w = 0; w < W; ++w) {
        const acc_t uw = geo.u(w);
        const acc_t ix = geo.ix(uw, rx), iy = geo.iy(uw, ry);
        acc_t gix, giy;
        if constexpr (kSmem) {
          bilinear<true>(SmemMap<acc_t>{map, pitch}, ix, iy, H, W, gix, giy);
        } else {
          bilinear<true>(GlobalMap<scalar_t, acc_t>{src, W}, ix, iy, H, W, gix, giy);
        }
        const acc_t dr = w == a ? g_mean + g : g_mean;
        const acc_t ex = dr * gix, ey = dr * giy;
        rsx += ex;
        rsxu += ex * uw;
        rsy += ey;
        rsyu += ey * uw;
      }
      sx += rsx;
      sxu += rsxu;
      sxv += rsx * vh;
      sy += rsy;
      syu += rsyu;
      syv += rsy * vh;
    }

    // dx: lane per input pixel (coalesced writes), gathering its samples in pattern order.
    scalar_t* d_row = dx + plane * HW;
    for (int p = lane; p < HW; p += kWarp) {
      acc_t s = acc_t(0);
      const int e_end = off[p + 1];
      for (int e = off[p]; e < e_end; ++e) {
        const uint32_t hw = pos[e];
        const int h = static_cast<int>(hw >> 16), w = static_cast<int>(hw & 0xffffu);
        const acc_t g = g_row[h];
        const acc_t g_mean = g / Wf;
        const acc_t dr = w == a_row[h] ? g_mean + g : g_mean;
        s += wgt[e] * dr;
      }
      d_row[p] = static_cast<scalar_t>(s);
    }
    if constexpr (kSmem) __syncwarp();  // the staged rows are overwritten by the next channel
  }

  const acc_t sums[6] = {sxu, sxv, sx, syu, syv, sy};
  block_partial_sums<6>(sums, warp_sums, nwarps, partial + (static_cast<int64_t>(b) * nchunks + chunk) * 6);
}

// The backward's partials are dtheta's six entries before their constant factors: dtheta[b, k] =
// factor_k * (sum over the blocks of b, in block order, of partial slot k).
struct GeneralThetaLayout {
  static constexpr int kSlots = 6;
  __device__ static int slot(int k) { return k; }
  template <typename acc_t>
  __device__ static acc_t factor(int k, int H, int W) {
    const acc_t Wf = static_cast<acc_t>(W), Hf = static_cast<acc_t>(H);
    acc_t f = acc_t(1);
    if (k == 1) f = Wf / Hf;
    if (k == 2) f = acc_t(0.5) * Wf;
    if (k == 3) f = Hf / Wf;
    if (k == 5) f = acc_t(0.5) * Hf;
    return f;
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
  TORCH_CHECK(x.size(1) <= INT_MAX && x.size(2) * x.size(3) <= (INT_MAX - 1) / 4,
              "x: C and 4 * H * W must fit in int32, got shape ", x.sizes());
}

int map_pitch(int64_t W) { return static_cast<int>(W | 1); }  // odd: lanes on different rows hit different banks

std::tuple<at::Tensor, at::Tensor> affine_hpool_cuda(const at::Tensor& x, const at::Tensor& theta) {
  check_x_theta(x, theta);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor tc = theta.contiguous();
  const int64_t B = xc.size(0), C = xc.size(1), H = xc.size(2), W = xc.size(3);
  at::Tensor out = at::empty({B, C, H}, xc.options());
  at::Tensor argmax = at::empty({B, C, H}, xc.options().dtype(at::kInt));
  const int64_t nchunks = ceil_div(C, kChannelsPerBlock);
  TORCH_CHECK(B * nchunks <= INT_MAX, "x: batch too large for the CUDA affine_hpool grid, got shape ", x.sizes());
  const int pitch = map_pitch(W);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "scstn_vcn::affine_hpool", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const int64_t map_bytes = H * pitch * static_cast<int64_t>(sizeof(acc_t));
    const int64_t warps = std::min<int64_t>(kMaxWarps, kDynSmem / map_bytes);
    const unsigned grid = static_cast<unsigned>(B * nchunks);
    if (warps >= 1) {
      affine_hpool_forward_kernel<scalar_t, acc_t, true>
          <<<grid, static_cast<unsigned>(warps * kWarp), static_cast<size_t>(warps * map_bytes), stream>>>(
              xc.const_data_ptr<scalar_t>(), tc.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(),
              argmax.mutable_data_ptr<int32_t>(), static_cast<int>(C), static_cast<int>(H), static_cast<int>(W),
              static_cast<int>(nchunks), pitch);
    } else {
      affine_hpool_forward_kernel<scalar_t, acc_t, false><<<grid, kMaxWarps * kWarp, 0, stream>>>(
          xc.const_data_ptr<scalar_t>(), tc.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(),
          argmax.mutable_data_ptr<int32_t>(), static_cast<int>(C), static_cast<int>(H), static_cast<int>(W),
          static_cast<int>(nchunks), pitch);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, argmax};
}

std::tuple<at::Tensor, at::Tensor> affine_hpool_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                              const at::Tensor& theta, const at::Tensor& argmax) {
  check_x_theta(x, theta);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W, N = 4 * HW;
  check_float(grad_out, "grad_out");
  check_shape(grad_out, {B, C, H}, "grad_out");
  check_same_device(x, "x", grad_out, "grad_out");
  check_dtype(argmax, at::kInt, "argmax", "the index output of affine_hpool");
  check_shape(argmax, {B, C, H}, "argmax");
  check_same_device(x, "x", argmax, "argmax");
  // Output pixels are packed as (h << 16 | w) in the transposed sampling pattern.
  TORCH_CHECK(H <= 65535 && W <= 65535, "x: the CUDA affine_hpool_backward supports H and W up to 65535, got shape ",
              x.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor tc = theta.contiguous();
  const at::ScalarType acc_type = tc.scalar_type();
  const at::Tensor g = grad_out.to(acc_type).contiguous();  // (B, C, H): 1/W of x, read in the compute dtype
  const at::Tensor am = argmax.contiguous();
  at::Tensor dx = at::empty({B, C, H, W}, xc.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_theta = at::empty({B, 2, 3}, tc.options());
  const int64_t nchunks = ceil_div(C, kChannelsPerBlock);
  TORCH_CHECK(B * nchunks <= INT_MAX, "x: batch too large for the CUDA affine_hpool grid, got shape ", x.sizes());
  at::Tensor partial = at::empty({B, nchunks, 6}, tc.options());
  const int pitch = map_pitch(W);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  constexpr int threads = 256;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "scstn_vcn::affine_hpool_backward", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    // 1. The transposed sampling pattern of each b, in a deterministic order.
    at::Tensor keys = at::empty({B, N}, tc.options().dtype(at::kInt));
    at::Tensor weights = at::empty({B, N}, tc.options());
    const int64_t samples = B * HW;
    affine_pattern_keys_kernel<acc_t><<<static_cast<unsigned>(ceil_div(samples, threads)), threads, 0, stream>>>(
        tc.const_data_ptr<acc_t>(), keys.mutable_data_ptr<int32_t>(), weights.mutable_data_ptr<acc_t>(), samples,
        static_cast<int>(H), static_cast<int>(W));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // Stable: entries of one pixel keep increasing sample order, so the gather order is fixed.
    auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/1, /*descending=*/false);
    const at::Tensor sorted_keys = std::get<0>(sorted).contiguous();
    const at::Tensor order = std::get<1>(sorted).contiguous();
    at::Tensor entry_pos = at::empty({B, N}, tc.options().dtype(at::kInt));
    at::Tensor entry_weight = at::empty({B, N}, tc.options());
    at::Tensor offsets = at::empty({B, HW + 1}, tc.options().dtype(at::kInt));
    const int64_t slots = B * (N + 1);
    affine_pattern_pack_kernel<acc_t><<<static_cast<unsigned>(ceil_div(slots, threads)), threads, 0, stream>>>(
        sorted_keys.const_data_ptr<int32_t>(), order.const_data_ptr<int64_t>(), weights.const_data_ptr<acc_t>(),
        reinterpret_cast<uint32_t*>(entry_pos.mutable_data_ptr<int32_t>()), entry_weight.mutable_data_ptr<acc_t>(),
        offsets.mutable_data_ptr<int32_t>(), slots, static_cast<int>(HW), static_cast<int>(W));
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    // 2. Shared memory plan: the pattern if it leaves room for two warps, then as many warps
    //    (up to 8) as fit; maps too large even for one warp are read from global memory.
    const int64_t acc_size = sizeof(acc_t);
    const int64_t pattern_bytes = N * (acc_size + 4) + (HW + 1) * 4;
    const int64_t warp_bytes = (H * pitch + H) * acc_size + H * 4;
    bool pattern_in_smem = false;
    bool smem_maps = true;
    int64_t warps = kMaxWarps;
    if (pattern_bytes + 2 * warp_bytes <= kDynSmem) {
      pattern_in_smem = true;
      warps = std::min<int64_t>(kMaxWarps, (kDynSmem - pattern_bytes) / warp_bytes);
    } else if (warp_bytes <= kDynSmem) {
      warps = std::min<int64_t>(kMaxWarps, kDynSmem / warp_bytes);
    } else {
      smem_maps = false;
    }
    const int64_t smem = (pattern_in_smem ? pattern_bytes : 0) + (smem_maps ? warps * warp_bytes : 0);
    const unsigned grid = static_cast<unsigned>(B * nchunks);
    const auto* pos_ptr = reinterpret_cast<const uint32_t*>(entry_pos.const_data_ptr<int32_t>());
    if (smem_maps) {
      affine_hpool_backward_kernel<scalar_t, acc_t, true>
          <<<grid, static_cast<unsigned>(warps * kWarp), static_cast<size_t>(smem), stream>>>(
              xc.const_data_ptr<scalar_t>(), tc.const_data_ptr<acc_t>(), g.const_data_ptr<acc_t>(),
              am.const_data_ptr<int32_t>(), pos_ptr, entry_weight.const_data_ptr<acc_t>(),
              offsets.const_data_ptr<int32_t>(), pattern_in_smem, dx.mutable_data_ptr<scalar_t>(),
              partial.mutable_data_ptr<acc_t>(), static_cast<int>(C), static_cast<int>(H), static_cast<int>(W),
              static_cast<int>(nchunks), pitch);
    } else {
      affine_hpool_backward_kernel<scalar_t, acc_t, false>
          <<<grid, static_cast<unsigned>(warps * kWarp), static_cast<size_t>(smem), stream>>>(
              xc.const_data_ptr<scalar_t>(), tc.const_data_ptr<acc_t>(), g.const_data_ptr<acc_t>(),
              am.const_data_ptr<int32_t>(), pos_ptr, entry_weight.const_data_ptr<acc_t>(),
              offsets.const_data_ptr<int32_t>(), pattern_in_smem, dx.mutable_data_ptr<scalar_t>(),
              partial.mutable_data_ptr<acc_t>(), static_cast<int>(C), static_cast<int>(H), static_cast<int>(W),
              static_cast<int>(nchunks), pitch);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    // 3. dtheta from the per-block partials, in block order.
    launch_theta_finish<acc_t, GeneralThetaLayout>(partial, grad_theta, B, nchunks, H, W, stream);
  });
  return {dx, grad_theta};
}

}  // namespace
}  // namespace cuda
}  // namespace scstn_vcn

TORCH_LIBRARY_IMPL(scstn_vcn, CUDA, m) {
  m.impl("affine_hpool", &scstn_vcn::cuda::affine_hpool_cuda);
  m.impl("affine_hpool_backward", &scstn_vcn::cuda::affine_hpool_backward_cuda);
}
