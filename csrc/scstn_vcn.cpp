// The op schemas of scstn_vcn, declared once. The CPU kernels (csrc/cpu/) and the CUDA
// kernels (csrc/cuda/) register implementations for these schemas per dispatch key; the
// Python side (scstn_vcn/ops/) adds the fake (meta) functions and the autograd formulas.
//
// Index outputs are int32 and name the FIRST maximal element of each pooled row, so the
// gradient of a max goes to exactly one element, the same one in every backend.

#include <Python.h>
#include <torch/library.h>

// An importable Python module `scstn_vcn._C` whose import loads this library and so runs the
// TORCH_LIBRARY registrations below; the ops are then reached through torch.ops.scstn_vcn.
// WITH_CUDA tells whether this build compiled the CUDA kernels (setup.py decides).
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "scstn_vcn compiled kernels (ops under torch.ops.scstn_vcn)", -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef SCSTN_VCN_WITH_CUDA
  PyObject* with_cuda = Py_True;
#else
  PyObject* with_cuda = Py_False;
#endif
  Py_INCREF(with_cuda);
  if (PyModule_AddObject(module, "WITH_CUDA", with_cuda) < 0) {
    Py_DECREF(with_cuda);
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

TORCH_LIBRARY(scstn_vcn, m) {
  // x (B,C,H,W) -> cmean (B,H,W) = mean_c x;  gpool (B,C) = mean_hw x + max_hw x;
  // argmax (B,C) int32 = h*W + w of the first maximum.
  m.def("channel_pool(Tensor x) -> (Tensor, Tensor, Tensor)");
  // -> grad_x (B,C,H,W) contiguous; x supplies sizes, dtype and device only.
  m.def("channel_pool_backward(Tensor grad_cmean, Tensor grad_gpool, Tensor argmax, Tensor x) -> Tensor");

  // x (B,C,H,W), theta (B,2,3) -> out (B,C,H) = mean_w r + max_w r with
  // r = grid_sample(x, affine_grid(theta, x.shape), bilinear, zeros, align_corners=False);
  // argmax (B,C,H) int32 = w of the first maximum of r's row.
  m.def("affine_hpool(Tensor x, Tensor theta) -> (Tensor, Tensor)");
  // -> (grad_x (B,C,H,W) contiguous in x.dtype, grad_theta (B,2,3) contiguous in theta.dtype)
  m.def("affine_hpool_backward(Tensor grad_out, Tensor x, Tensor theta, Tensor argmax) -> (Tensor, Tensor)");
  // The same for a rotation-free theta: theta[:,0,1] and theta[:,1,0] are taken as 0 (not read), so
  // the sampling factorises into a row and a column interpolation; their gradient is 0.
  m.def("affine_hpool_separable(Tensor x, Tensor theta) -> (Tensor, Tensor)");
  m.def("affine_hpool_separable_backward(Tensor grad_out, Tensor x, Tensor theta, Tensor argmax) -> (Tensor, Tensor)");

  // F (B,C,H), delta (C,K,H) -> f (B,C,K) = sum_h F[b,c,h] * delta[c,k,h], in F.dtype.
  m.def("vertical_proj(Tensor F, Tensor delta) -> Tensor");
  // -> (grad_F (B,C,H) in F.dtype, grad_delta (C,K,H) in delta.dtype), both contiguous.
  m.def("vertical_proj_backward(Tensor grad_f, Tensor F, Tensor delta) -> (Tensor, Tensor)");
}
