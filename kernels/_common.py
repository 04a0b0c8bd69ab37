"""Helpers shared by the Triton launchers: the accumulation dtype and block-size choices."""

import torch
import triton
import triton.language as tl


def acc_dtype(dtype):
    """Triton accumulation dtype for activations of torch dtype `dtype`: float64 stays float64,
    float16/bfloat16/float32 accumulate in float32 (the interpreter has no half arithmetic either)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def torch_acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def pow2(n, lo=1, hi=None):
    """next power of two >= n, clamped to [lo, hi] (a tl.arange length must be a power of two)."""
    value = max(lo, triton.next_power_of_2(max(int(n), 1)))
    return min(value, hi) if hi is not None else value


def num_warps_for(elements):
    """Warps for a tile of `elements` values: 8 from 1024 values up. The gather-heavy kernels then hold
    4 to 8 values per thread and compile without spills (checked with ptxas for sm_90)."""
    return 8 if elements >= 1024 else 4
