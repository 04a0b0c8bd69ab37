"""scstn-vcn: person re-identification with a self-constrained spatial transformer (SC-STN) and a
vertical convolution network (VCN) on a ResNet-50, with fused Triton and C++/CUDA kernels."""

import torch  # noqa: F401  (loads libtorch before the compiled extension scstn_vcn._C can be imported)

from scstn_vcn._version import __version__


def __getattr__(name):
    # FeatureExtractor is imported on first use, so `import scstn_vcn` (and the CLI's start-up) stays light.
    if name == "FeatureExtractor":
        from scstn_vcn.extractor import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module 'scstn_vcn' has no attribute {name!r}")


__all__ = ["FeatureExtractor", "__version__"]
