// vertical_proj on CUDA: the VCN's per-channel vertical projections (Eq. 7).
//
// Forward, F (B, C, H), delta (C, K, H):
//   f[b, c, k] = sum_h F[b, c, h] * delta[c, k, h]
// Backward, g = dL/df (B, C, K):
//   dF[b, c, h]     = sum_k g[b, c, k] * delta[c, k, h]
//   ddelta[c, k, h] = sum_b g[b, c, k] * F[b, c, h]      (over b in increasing order)
//
// F is 1/W of the feature map, so these kernels aim at coalesced access rather than reuse:
//  * forward and dF: one warp per (b, c) row; lanes stride over h, so F[b, c, :], delta[c, k, :]
//    and dF[b, c, :] are read / written as contiguous runs; the forward's per-k dot products are
//    finished by a fixed xor-shuffle tree.
//  * ddelta: the batch is cut into S consecutive splits (grid.y); one thread per (c, h, split)
//    holds up to 8 k accumulators and loops over its split's b in order; the threads of a warp
//    cover consecutive h, so each F[b, c, :] run is read coalesced once per 8 values of k. A
//    finishing kernel adds the S partial sums in split order (S = 1 writes ddelta directly). S is
//    chosen to fill the GPU (C H threads alone are a few hundred blocks walking all of B) while
//    each split keeps at least 16 images, so the partials stay a fraction of F's traffic.
// No atomics: every sum has a fixed order, and the results are bitwise reproducible.
// delta and the gradients are in the compute dtype (float32, or float64 for float64 F).

#include "checks.h"
#include "common.cuh"

#include <torch/library.h>

#include <algorithm>
#include <climits>

namespace scstn_vcn {
namespace cuda {
namespace {

constexpr int kRowThreads = 256;     // 8 rows (warps) per block
constexpr int kKChunk = 8;           // k accumulators per thread in the ddelta kernel
constexpr int kMinSplitImages = 16;  // images per ddelta split at least (see the header)

inline int64_t row_blocks(int64_t rows) {
  return std::min<int64_t>(ceil_div(rows, kRowThreads / kWarp), int64_t(1) << 20);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    vertical_proj_forward_kernel(const scalar_t* __restrict__ F, const acc_t* __restrict__ delta,
                                 scalar_t* __restrict__ f, int64_t rows, int C, int H, int K) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_total = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; row < rows;
       row += warps_total) {
    const int64_t c = row % C;
    const scalar_t* Frow = F + row * H;
    const acc_t* drow = delta + c * K * H;
    for (int k = 0; k < K; ++k) {
      acc_t s = acc_t(0);
      for (int h = lane; h < H; h += kWarp) s += static_cast<acc_t>(Frow[h]) * drow[static_cast<int64_t>(k) * H + h];
      s = warp_sum(s);
      if (lane == 0) f[row * K + k] = static_cast<scalar_t>(s);
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    vertical_proj_grad_F_kernel(const acc_t* __restrict__ grad_f, const acc_t* __restrict__ delta,
                                scalar_t* __restrict__ dF, int64_t rows, int C, int H, int K) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_total = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; row < rows;
       row += warps_total) {
    const int64_t c = row % C;
    const acc_t* grow = grad_f + row * K;
    const acc_t* drow = delta + c * K * H;
    for (int h = lane; h < H; h += kWarp) {
      acc_t s = acc_t(0);
      for (int k = 0; k < K; ++k) s += grow[k] * drow[static_cast<int64_t>(k) * H + h];
      dF[row * H + h] = static_cast<scalar_t>(s);
    }
  }
}

// partial[split, c, k, h] = sum over the split's b (increasing) of grad_f[b, c, k] * F[b, c, h].
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(256)
    vertical_proj_grad_delta_kernel(const acc_t* __restrict__ grad_f, const scalar_t* __restrict__ F,
                                    acc_t* __restrict__ partial, int B, int C, int H, int K, int per_split) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(C) * H) return;
  const int64_t c = idx / H;
  const int64_t h = idx - c * H;
  const int b_first = static_cast<int>(blockIdx.y) * per_split;
  const int b_end = min(B, b_first + per_split);
  acc_t* out = partial + static_cast<int64_t>(blockIdx.y) * C * K * H;
  for (int k0 = 0; k0 < K; k0 += kKChunk) {
    acc_t s[kKChunk];
#pragma unroll
    for (int kk = 0; kk < kKChunk; ++kk) s[kk] = acc_t(0);
    for (int b = b_first; b < b_end; ++b) {
      const int64_t bc = static_cast<int64_t>(b) * C + c;
      const acc_t v = static_cast<acc_t>(F[bc * H + h]);
      const acc_t* g = grad_f + bc * K + k0;
#pragma unroll
      for (int kk = 0; kk < kKChunk; ++kk)
        if (k0 + kk < K) s[kk] += g[kk] * v;
    }
#pragma unroll
    for (int kk = 0; kk < kKChunk; ++kk)
      if (k0 + kk < K) out[(c * K + k0 + kk) * H + h] = s[kk];
  }
}

// ddelta[i] = the sum of the splits' partial[s, i] in split order.
template <typename acc_t>
__global__ void vertical_proj_grad_delta_finish_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ ddelta,
                                                       int64_t n, int splits) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  acc_t s = acc_t(0);
  for (int j = 0; j < splits; ++j) s += partial[j * n + i];
  ddelta[i] = s;
}

// Number of ddelta splits: enough (c, h, split) threads to fill every SM, each split at least
// kMinSplitImages images, at most 65535 (grid.y).
int64_t grad_delta_splits(int64_t B, int64_t C, int64_t H) {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t resident = static_cast<int64_t>(prop->multiProcessorCount) * prop->maxThreadsPerMultiProcessor;
  const int64_t wanted = std::min(ceil_div(resident, C * H), std::max<int64_t>(1, B / kMinSplitImages));
  return std::min<int64_t>(std::max<int64_t>(1, wanted), 65535);
}

void check_F_delta(const at::Tensor& F, const at::Tensor& delta) {
  check_float(F, "F");
  check_dim(F, 3, "F", "(B, C, H)");
  check_cuda(F, "F");
  check_float(delta, "delta");
  check_dim(delta, 3, "delta", "(C, K, H)");
  check_same_device(F, "F", delta, "delta");
  TORCH_CHECK(delta.size(0) == F.size(1) && delta.size(2) == F.size(2),
              "delta must have shape (C, K, H) with C = ", F.size(1), " and H = ", F.size(2), " to match F, got ",
              delta.sizes());
  check_dtype(delta, compute_type(F.scalar_type()), "delta", "the compute dtype of F");
  TORCH_CHECK(F.size(0) <= INT_MAX && F.size(1) <= INT_MAX && F.size(2) <= INT_MAX && delta.size(1) <= INT_MAX,
              "F and delta: each dimension must fit in int32, got ", F.sizes(), " and ", delta.sizes());
}

at::Tensor vertical_proj_cuda(const at::Tensor& F, const at::Tensor& delta) {
  check_F_delta(F, delta);
  const c10::cuda::CUDAGuard guard(F.device());
  const at::Tensor Fc = F.contiguous();
  const at::Tensor dc = delta.contiguous();
  const int64_t B = Fc.size(0), C = Fc.size(1), H = Fc.size(2), K = dc.size(1);
  at::Tensor f = at::empty({B, C, K}, Fc.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t rows = B * C;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, Fc.scalar_type(), "scstn_vcn::vertical_proj", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    vertical_proj_forward_kernel<scalar_t, acc_t><<<static_cast<unsigned>(row_blocks(rows)), kRowThreads, 0, stream>>>(
        Fc.const_data_ptr<scalar_t>(), dc.const_data_ptr<acc_t>(), f.mutable_data_ptr<scalar_t>(), rows,
        static_cast<int>(C), static_cast<int>(H), static_cast<int>(K));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return f;
}

std::tuple<at::Tensor, at::Tensor> vertical_proj_backward_cuda(const at::Tensor& grad_f, const at::Tensor& F,
                                                               const at::Tensor& delta) {
  check_F_delta(F, delta);
  const int64_t B = F.size(0), C = F.size(1), H = F.size(2), K = delta.size(1);
  check_float(grad_f, "grad_f");
  check_shape(grad_f, {B, C, K}, "grad_f");
  check_same_device(F, "F", grad_f, "grad_f");
  const c10::cuda::CUDAGuard guard(F.device());
  const at::Tensor Fc = F.contiguous();
  const at::Tensor dc = delta.contiguous();
  // grad_f is (B, C, K), a fraction of F's size: read it in the compute dtype.
  const at::Tensor g = grad_f.to(delta.scalar_type()).contiguous();
  at::Tensor dF = at::empty({B, C, H}, Fc.options());
  at::Tensor ddelta = at::empty({C, K, H}, dc.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t rows = B * C;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, Fc.scalar_type(), "scstn_vcn::vertical_proj_backward", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    vertical_proj_grad_F_kernel<scalar_t, acc_t><<<static_cast<unsigned>(row_blocks(rows)), kRowThreads, 0, stream>>>(
        g.const_data_ptr<acc_t>(), dc.const_data_ptr<acc_t>(), dF.mutable_data_ptr<scalar_t>(), rows,
        static_cast<int>(C), static_cast<int>(H), static_cast<int>(K));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t threads = 256;
    const int64_t per_split = ceil_div(B, grad_delta_splits(B, C, H));
    const int64_t splits = ceil_div(B, per_split);
    at::Tensor partial = splits == 1 ? ddelta : at::empty({splits, C, K, H}, dc.options());
    const dim3 grid(static_cast<unsigned>(ceil_div(C * H, threads)), static_cast<unsigned>(splits));
    vertical_proj_grad_delta_kernel<scalar_t, acc_t>
        <<<grid, threads, 0, stream>>>(g.const_data_ptr<acc_t>(), Fc.const_data_ptr<scalar_t>(),
                                       partial.mutable_data_ptr<acc_t>(), static_cast<int>(B), static_cast<int>(C),
                                       static_cast<int>(H), static_cast<int>(K), static_cast<int>(per_split));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (splits > 1) {
      const int64_t n = C * K * H;
      vertical_proj_grad_delta_finish_kernel<acc_t>
          <<<static_cast<unsigned>(ceil_div(n, threads)), threads, 0, stream>>>(
              partial.const_data_ptr<acc_t>(), ddelta.mutable_data_ptr<acc_t>(), n, static_cast<int>(splits));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {dF, ddelta};
}

}  // namespace
}  // namespace cuda
}  // namespace scstn_vcn

TORCH_LIBRARY_IMPL(scstn_vcn, CUDA, m) {
  m.impl("vertical_proj", &scstn_vcn::cuda::vertical_proj_cuda);
  m.impl("vertical_proj_backward", &scstn_vcn::cuda::vertical_proj_backward_cuda);
}
