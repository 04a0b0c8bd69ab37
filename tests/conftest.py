"""Test-session set-up.

Triton reads TRITON_INTERPRET when its kernels are decorated, i.e. when scstn_vcn.kernels.<op> is first
imported. Without a GPU the Triton backend can only run in the interpreter, so switch it on here, before
any test imports the kernels; with a GPU the Triton tests run compiled.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
