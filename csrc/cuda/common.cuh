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

// Checks every CUDA op makes on a tensor argument beyond checks.h: on the device of `ref`.
inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor for the CUDA kernel, got device ", t.device());
}

}  // namespace cuda
}  // namespace scstn_vcn
