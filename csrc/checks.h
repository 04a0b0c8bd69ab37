// Input checks shared by the CPU and CUDA kernels. Every message names the argument and what was
// expected, because the ops can be called directly through torch.ops.scstn_vcn.
#pragma once

#include <ATen/ATen.h>

namespace scstn_vcn {

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble || t.scalar_type() == at::kHalf ||
                  t.scalar_type() == at::kBFloat16,
              name, " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t ndim, const char* name, const char* layout) {
  TORCH_CHECK(t.dim() == ndim, name, " must be ", ndim, "-D ", layout, ", got shape ", t.sizes());
  TORCH_CHECK(t.numel() > 0, name, " must have no zero-sized dimension ", layout, ", got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  TORCH_CHECK(a.device() == b.device(), b_name, " must be on the same device as ", a_name, " (", a.device(), "), got ",
              b.device());
}

inline void check_dtype(const at::Tensor& t, at::ScalarType expected, const char* name, const char* why) {
  TORCH_CHECK(t.scalar_type() == expected, name, " must be ", expected, " (", why, "), got ", t.scalar_type());
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* name) {
  TORCH_CHECK(t.sizes() == expected, name, " must have shape ", expected, ", got ", t.sizes());
}

// The dtype kernels compute in for activations of dtype `t`: float64 stays, the rest use float32.
inline at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace scstn_vcn
