"""scstn-vcn: person re-identification with a self-constrained spatial transformer (SC-STN) and a
vertical convolution network (VCN) on a ResNet-50, with fused Triton and C++/CUDA kernels."""

import torch  # noqa: F401  (loads libtorch before the compiled extension scstn_vcn._C can be imported)

__version__ = "0.1.0"
