"""Triton kernels of scstn-vcn, installed as the subpackage `scstn_vcn.kernels`.

One module per op (channel_pool, affine_hpool, affine_hpool_separable -- the rotation-free path of
affine_hpool --, vertical_proj), each with its math in the docstring and the launchers <op>_forward /
<op>_backward that scstn_vcn.ops wires into torch.library; _common holds what they share (device context,
grid-limit and int32-index checks).

Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when these modules are imported: with
TRITON_INTERPRET=1 set before then, the kernels run on CPU tensors in Triton's interpreter.
"""

import os

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
