"""Registration of the fused ops with torch.library: one fake function and one autograd formula per op
(from the op's module), attached to both fused namespaces.

  torch.ops.scstn_vcn         -- the native ops; schemas declared in csrc/scstn_vcn.cpp, kernels in
                                 csrc/cpu and csrc/cuda. Wired here once scstn_vcn._C is imported.
  torch.ops.scstn_vcn_triton  -- the Triton ops, Python custom ops with the same schemas whose
                                 implementations call the launchers in scstn_vcn.kernels.<op>
                                 (<op>_forward / <op>_backward), imported on first use so that
                                 TRITON_INTERPRET can still be set before then.
"""

import importlib

import torch

from scstn_vcn.ops._backend import when_native_loaded

# By module path: the package re-exports functions of the same names as these modules.
OPS = {
    op: importlib.import_module(f"scstn_vcn.ops.{op}")
    for op in ("channel_pool", "affine_hpool", "affine_hpool_separable", "vertical_proj")
}

# The same signatures as the TORCH_LIBRARY block in csrc/scstn_vcn.cpp (keep the two in step).
SCHEMAS = {
    "channel_pool": "(Tensor x) -> (Tensor, Tensor, Tensor)",
    "channel_pool_backward": "(Tensor grad_cmean, Tensor grad_gpool, Tensor argmax, Tensor x) -> Tensor",
    "affine_hpool": "(Tensor x, Tensor theta) -> (Tensor, Tensor)",
    "affine_hpool_backward": "(Tensor grad_out, Tensor x, Tensor theta, Tensor argmax) -> (Tensor, Tensor)",
    "affine_hpool_separable": "(Tensor x, Tensor theta) -> (Tensor, Tensor)",
    "affine_hpool_separable_backward": "(Tensor grad_out, Tensor x, Tensor theta, Tensor argmax) -> (Tensor, Tensor)",
    "vertical_proj": "(Tensor F, Tensor delta) -> Tensor",
    "vertical_proj_backward": "(Tensor grad_f, Tensor F, Tensor delta) -> (Tensor, Tensor)",
}
NATIVE, TRITON = "scstn_vcn", "scstn_vcn_triton"


def _wire(namespace):
    """Attach each op's fake functions and autograd formula to the ops of `namespace`."""
    ops_of = lambda: getattr(torch.ops, namespace)  # noqa: E731  (looked up at call time)
    for op, module in OPS.items():
        torch.library.register_fake(f"{namespace}::{op}", module.fake_forward)
        torch.library.register_fake(f"{namespace}::{op}_backward", module.fake_backward)
        torch.library.register_autograd(
            f"{namespace}::{op}", module.make_backward(ops_of), setup_context=module.setup_context
        )


def _triton_launcher(name):
    op = name.removesuffix("_backward")
    kind = "backward" if name.endswith("_backward") else "forward"

    def launch(*args):
        module = importlib.import_module(f"scstn_vcn.kernels.{op}")
        return getattr(module, f"{op}_{kind}")(*args)

    launch.__name__ = name
    return launch


def _define_triton():
    for name, schema in SCHEMAS.items():
        torch.library.custom_op(f"{TRITON}::{name}", _triton_launcher(name), mutates_args=(), schema=schema)
    _wire(TRITON)


_native_wired = []


def register_native():
    """Called once scstn_vcn._C has been imported (its schemas exist)."""
    if not _native_wired:
        _wire(NATIVE)
        _native_wired.append(True)


_define_triton()
when_native_loaded(register_native)
