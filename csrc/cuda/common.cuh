// Helpers shared by the CUDA kernels of scstn_vcn (csrc/cuda/*.cu).
//
// Conventions kept by every kernel:
//  * Accumulation is in acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>: float for
//    float16/bfloat16/float32, double for float64.
//  * Every reduction runs in a fixed order (per-lane loops, xor-shuffle trees with fixed
//    partners, then fixed-order loops over warps and blocks). No floating-point atomics are used
//    anywhere, so every output, gradients included, is bitwise reproducible run to run.
//  * "First maximum": a pooled row's argmax is the smallest index among its maximal elements,
//    and a NaN counts as larger than any number (torch.max propagates NaN and returns the index
//    of the first NaN), so max/argmax agree with torch.max on the CPU.
#pragma once

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

namespace scstn_vcn {
namespace cuda {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
// Dynamic shared memory a block may use without opting in (the same on sm_80 and sm_90).
constexpr int64_t kSmemBudget = 48 * 1024;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// isnan rather than v != v: the build uses --use_fast_math, and the intrinsic survives it.
__device__ __forceinline__ bool is_nan(float v) { return isnan(v); }
__device__ __forceinline__ bool is_nan(double v) { return isnan(v); }

// True when (v, i) should replace the current best (m, j) of a running max: v is larger, or v is
// NaN and m is not, or the two are equal (or both NaN) and i comes first.
template <typename T>
__device__ __forceinline__ bool beats(T v, int i, T m, int j) {
  if (is_nan(v)) return !is_nan(m) || i < j;
  if (is_nan(m)) return false;
  return v > m || (v == m && i < j);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Max with first-index ties across a warp; every lane ends with the warp's (max, argmax).
template <typename T>
__device__ __forceinline__ void warp_max_first(T& m, int& j) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) {
    const T om = __shfl_xor_sync(kFullMask, m, offset);
    const int oj = __shfl_xor_sync(kFullMask, j, offset);
    if (beats(om, oj, m, j)) {
      m = om;
      j = oj;
    }
  }
}

template <typename T>
__device__ __forceinline__ T neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() {
  return -__int_as_float(0x7f800000);
}
template <>
__device__ __forceinline__ double neg_inf<double>() {
  return -__longlong_as_double(0x7ff0000000000000LL);
}

// A map staged in shared memory, read as map(y, x): rows `pitch` values apart (an odd pitch, so that
// threads on consecutive rows hit different banks).
template <typename acc_t>
struct SmemMap {
  const acc_t* p;
  int pitch;
  __device__ __forceinline__ acc_t operator()(int y, int x) const { return p[y * pitch + x]; }
};

// Block-wide sums of N per-thread accumulators, written to out[0 .. N): each value goes through a
// xor-shuffle tree, lane 0 of every warp parks the warp's sums in warp_sums, and thread k < N adds the
// nwarps warps' k-th sums in warp order -- a fixed order, so the partials are bitwise reproducible.
// Every thread of the block must call it (it synchronises the block).
template <int N, typename T>
__device__ __forceinline__ void block_partial_sums(const T (&v)[N], T (*warp_sums)[N], int nwarps, T* out) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  T r[N];
#pragma unroll
  for (int k = 0; k < N; ++k) r[k] = warp_sum(v[k]);
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < N; ++k) warp_sums[warp][k] = r[k];
  }
  __syncthreads();
  if (threadIdx.x < N) {
    T s = T(0);
    for (int w = 0; w < nwarps; ++w) s += warp_sums[w][threadIdx.x];
    out[threadIdx.x] = s;
  }
}

// grad_theta[b, k] (B x 6, row-major 2 x 3 per b) from per-block partial sums laid out as
// partial[(b * nchunks + chunk) * Layout::kSlots + slot]: entry k is Layout::factor(k, H, W) times the sum,
// over the blocks of b in block order, of slot Layout::slot(k); a slot < 0 means a gradient of 0.
template <typename acc_t, typename Layout>
__global__ void theta_finish_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ grad_theta, int64_t total,
                                    int nchunks, int H, int W) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t b = idx / 6;
  const int k = static_cast<int>(idx - b * 6);
  const int j = Layout::slot(k);
  if (j < 0) {
    grad_theta[idx] = acc_t(0);
    return;
  }
  acc_t s = acc_t(0);
  for (int i = 0; i < nchunks; ++i) s += partial[(b * nchunks + i) * Layout::kSlots + j];
  grad_theta[idx] = Layout::template factor<acc_t>(k, H, W) * s;
}

// Launches theta_finish_kernel over the B * 6 entries of grad_theta on `stream`.
template <typename acc_t, typename Layout>
inline void launch_theta_finish(const at::Tensor& partial, at::Tensor& grad_theta, int64_t batch, int64_t nchunks,
                                int64_t H, int64_t W, cudaStream_t stream) {
  constexpr int threads = 256;
  const int64_t total = batch * 6;
  theta_finish_kernel<acc_t, Layout><<<static_cast<unsigned>(ceil_div(total, threads)), threads, 0, stream>>>(
      partial.const_data_ptr<acc_t>(), grad_theta.mutable_data_ptr<acc_t>(), total, static_cast<int>(nchunks),
      static_cast<int>(H), static_cast<int>(W));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Checks every CUDA op makes on a tensor argument beyond checks.h: on the device of `ref`.
inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor for the CUDA kernel, got device ", t.device());
}

}  // namespace cuda
}  // namespace scstn_vcn
