// channel_pool on CUDA: the channel mean (SC-STN input) and GAP + GMP (global branch) of x from
// one read of x.
//
// Forward, x (B, C, H, W), HW = H * W:
//   cmean[b, p]  = (1 / C)  * sum_c x[b, c, p]                         (p = h * W + w)
//   gpool[b, c]  = (1 / HW) * sum_p x[b, c, p] + max_p x[b, c, p]
//   argmax[b, c] = the first p at which the max is reached (int32)
// Backward, g_m = dL/dcmean, g_p = dL/dgpool:
//   dx[b, c, p] = g_m[b, p] / C + g_p[b, c] / HW + g_p[b, c] * [p == argmax[b, c]]
//
// Forward layout: a block owns one b and 64 channels (8 warps x 8 channels). A warp reads a
// channel's contiguous HW row in tiles of 256 (lane-strided, so each load instruction is one
// coalesced 32-element segment); each lane keeps the row's running sum / max / argmax in
// registers, and the tile's per-position channel sums in registers too. The 8 warps' channel sums
// are combined through shared memory in warp order and written as one partial row per block;
// a second kernel adds the partials of the C / 64 blocks of each b in block order. x is read
// exactly once and no reduction uses atomics, so the result is bitwise reproducible.

#include "checks.h"
#include "common.cuh"

#include <torch/library.h>

#include <climits>

namespace scstn_vcn {
namespace cuda {
namespace {

constexpr int kPoolWarps = 8;
constexpr int kChannelsPerWarp = 8;
constexpr int kChannelsPerBlock = kPoolWarps * kChannelsPerWarp;  // 64
constexpr int kVec = 8;                                           // positions per lane per tile
constexpr int kTile = kWarp * kVec;                               // 256 positions per tile

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kPoolWarps* kWarp)
    channel_pool_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ gpool,
                                int32_t* __restrict__ argmax, acc_t* __restrict__ partial, int C, int HW, int nchunks) {
  __shared__ acc_t tile_sums[kPoolWarps][kTile];
  const int warp = threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  const int b = blockIdx.x / nchunks;
  const int chunk = blockIdx.x - b * nchunks;
  const int c_first = chunk * kChannelsPerBlock + warp;  // this warp's channels: c_first + 8 j

  // Per lane, per channel: running sum, max and argmax over the positions this lane visits
  // (in increasing p, so a strict comparison keeps the first maximum).
  acc_t row_sum[kChannelsPerWarp];
  acc_t row_max[kChannelsPerWarp];
  int row_arg[kChannelsPerWarp];
#pragma unroll
  for (int j = 0; j < kChannelsPerWarp; ++j) {
    row_sum[j] = acc_t(0);
    row_max[j] = neg_inf<acc_t>();
    row_arg[j] = INT_MAX;
  }

  for (int t0 = 0; t0 < HW; t0 += kTile) {
    acc_t col_sum[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) col_sum[i] = acc_t(0);

#pragma unroll
    for (int j = 0; j < kChannelsPerWarp; ++j) {
      const int c = c_first + j * kPoolWarps;
      if (c < C) {  // uniform across the warp
        const scalar_t* row = x + (static_cast<int64_t>(b) * C + c) * HW;
        scalar_t v[kVec];
        // All loads first (independent, so they are in flight together), then the arithmetic.
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          const int p = t0 + lane + i * kWarp;
          v[i] = p < HW ? row[p] : scalar_t(0);
        }
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          const int p = t0 + lane + i * kWarp;
          if (p < HW) {
            const acc_t a = static_cast<acc_t>(v[i]);
            col_sum[i] += a;
            row_sum[j] += a;
            if (beats(a, p, row_max[j], row_arg[j])) {
              row_max[j] = a;
              row_arg[j] = p;
            }
          }
        }
      }
    }

    // Channel sums of this tile: per warp in registers, then across warps in warp order.
#pragma unroll
    for (int i = 0; i < kVec; ++i) tile_sums[warp][lane + i * kWarp] = col_sum[i];
    __syncthreads();
    for (int t = threadIdx.x; t < kTile; t += blockDim.x) {
      const int p = t0 + t;
      if (p < HW) {
        acc_t s = acc_t(0);
#pragma unroll
        for (int w = 0; w < kPoolWarps; ++w) s += tile_sums[w][t];
        partial[(static_cast<int64_t>(b) * nchunks + chunk) * HW + p] = s;
      }
    }
    __syncthreads();  // tile_sums is rewritten by the next tile
  }

#pragma unroll
  for (int j = 0; j < kChannelsPerWarp; ++j) {
    const int c = c_first + j * kPoolWarps;
    if (c < C) {  // uniform across the warp, so every lane joins the shuffles
      const acc_t s = warp_sum(row_sum[j]);
      acc_t m = row_max[j];
      int a = row_arg[j];
      warp_max_first(m, a);
      if (lane == 0) {
        const int64_t bc = static_cast<int64_t>(b) * C + c;
        gpool[bc] = static_cast<scalar_t>(s / static_cast<acc_t>(HW) + m);
        argmax[bc] = a;
      }
    }
  }
}

// cmean[b, p] = (sum over the blocks of b, in block order, of their partial sums) / C.
template <typename scalar_t, typename acc_t>
__global__ void channel_mean_finish_kernel(const acc_t* __restrict__ partial, scalar_t* __restrict__ cmean,
                                           int64_t total, int HW, int nchunks, int C) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t b = idx / HW;
  const int64_t p = idx - b * HW;
  const acc_t* src = partial + b * nchunks * HW + p;
  acc_t s = acc_t(0);
  for (int k = 0; k < nchunks; ++k) s += src[static_cast<int64_t>(k) * HW];
  cmean[idx] = static_cast<scalar_t>(s / static_cast<acc_t>(C));
}

// One warp per (b, c) row of dx (grid-stride over rows); lanes write the row coalesced.
template <typename scalar_t, typename acc_t>
__global__ void channel_pool_backward_kernel(const acc_t* __restrict__ grad_cmean, const acc_t* __restrict__ grad_gpool,
                                             const int32_t* __restrict__ argmax, scalar_t* __restrict__ dx,
                                             int64_t rows, int C, int HW) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_total = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);
  for (int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; row < rows;
       row += warps_total) {
    const int64_t b = row / C;
    const acc_t gp = grad_gpool[row];
    const acc_t gp_mean = gp / static_cast<acc_t>(HW);
    const int a = argmax[row];
    const acc_t* gm = grad_cmean + b * HW;
    scalar_t* out = dx + row * HW;
    for (int p = lane; p < HW; p += kWarp) {
      acc_t v = gm[p] * inv_c + gp_mean;
      if (p == a) v += gp;
      out[p] = static_cast<scalar_t>(v);
    }
  }
}

void check_x(const at::Tensor& x) {
  check_float(x, "x");
  check_dim(x, 4, "x", "(B, C, H, W)");
  check_cuda(x, "x");
  TORCH_CHECK(x.size(1) <= INT_MAX && x.size(2) * x.size(3) <= INT_MAX,
              "x: C and H * W must each fit in int32, got shape ", x.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> channel_pool_cuda(const at::Tensor& x) {
  check_x(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();  // channels_last and other layouts: one copy, then the fast path
  const int64_t B = xc.size(0), C = xc.size(1), H = xc.size(2), W = xc.size(3), HW = H * W;
  at::Tensor cmean = at::empty({B, H, W}, xc.options());
  at::Tensor gpool = at::empty({B, C}, xc.options());
  at::Tensor argmax = at::empty({B, C}, xc.options().dtype(at::kInt));
  const int64_t nchunks = ceil_div(C, kChannelsPerBlock);
  TORCH_CHECK(B * nchunks <= INT_MAX, "x: batch too large for the CUDA channel_pool grid, got shape ", x.sizes());
  at::Tensor partial = at::empty({B, nchunks, HW}, xc.options().dtype(compute_type(xc.scalar_type())));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "scstn_vcn::channel_pool", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    channel_pool_forward_kernel<scalar_t, acc_t><<<static_cast<unsigned>(B * nchunks), kPoolWarps * kWarp, 0, stream>>>(
        xc.const_data_ptr<scalar_t>(), gpool.mutable_data_ptr<scalar_t>(), argmax.mutable_data_ptr<int32_t>(),
        partial.mutable_data_ptr<acc_t>(), static_cast<int>(C), static_cast<int>(HW), static_cast<int>(nchunks));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t total = B * HW;
    constexpr int threads = 256;
    channel_mean_finish_kernel<scalar_t, acc_t>
        <<<static_cast<unsigned>(ceil_div(total, threads)), threads, 0, stream>>>(
            partial.const_data_ptr<acc_t>(), cmean.mutable_data_ptr<scalar_t>(), total, static_cast<int>(HW),
            static_cast<int>(nchunks), static_cast<int>(C));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {cmean, gpool, argmax};
}

at::Tensor channel_pool_backward_cuda(const at::Tensor& grad_cmean, const at::Tensor& grad_gpool,
                                      const at::Tensor& argmax, const at::Tensor& x) {
  check_x(x);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  check_float(grad_cmean, "grad_cmean");
  check_shape(grad_cmean, {B, H, W}, "grad_cmean");
  check_same_device(x, "x", grad_cmean, "grad_cmean");
  check_float(grad_gpool, "grad_gpool");
  check_shape(grad_gpool, {B, C}, "grad_gpool");
  check_same_device(x, "x", grad_gpool, "grad_gpool");
  check_dtype(argmax, at::kInt, "argmax", "the index output of channel_pool");
  check_shape(argmax, {B, C}, "argmax");
  check_same_device(x, "x", argmax, "argmax");
  const c10::cuda::CUDAGuard guard(x.device());

  // The incoming gradients are small ((B, H, W) and (B, C)): read them in the compute dtype.
  const at::ScalarType acc_type = compute_type(x.scalar_type());
  const at::Tensor gm = grad_cmean.to(acc_type).contiguous();
  const at::Tensor gp = grad_gpool.to(acc_type).contiguous();
  const at::Tensor am = argmax.contiguous();
  at::Tensor dx = at::empty({B, C, H, W}, x.options().memory_format(at::MemoryFormat::Contiguous));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const int64_t rows = B * C;
  constexpr int threads = 256;
  const int64_t blocks = std::min<int64_t>(ceil_div(rows, threads / kWarp), int64_t(1) << 20);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scstn_vcn::channel_pool_backward", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    channel_pool_backward_kernel<scalar_t, acc_t><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        gm.const_data_ptr<acc_t>(), gp.const_data_ptr<acc_t>(), am.const_data_ptr<int32_t>(),
        dx.mutable_data_ptr<scalar_t>(), rows, static_cast<int>(C), static_cast<int>(HW));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace
}  // namespace cuda
}  // namespace scstn_vcn

TORCH_LIBRARY_IMPL(scstn_vcn, CUDA, m) {
  m.impl("channel_pool", &scstn_vcn::cuda::channel_pool_cuda);
  m.impl("channel_pool_backward", &scstn_vcn::cuda::channel_pool_backward_cuda);
}
