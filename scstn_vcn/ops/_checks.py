"""Validation of op inputs: every error names the argument and what was expected."""

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(tensor, name, ndim, layout):
    """`tensor` must be a non-empty floating tensor with `ndim` dims laid out as `layout` (e.g. "(B, C, H, W)")."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(tensor).__name__}")
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(tensor.shape)}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {tensor.dtype}")
    if tensor.numel() == 0:
        raise ValueError(f"{name} must have no zero-sized dimension {layout}, got shape {tuple(tensor.shape)}")


def check_size(name, actual, expected, what):
    if actual != expected:
        raise ValueError(f"{name} must have {what}, got shape {actual}")


def check_same_device(**tensors):
    names = list(tensors)
    first = tensors[names[0]].device
    for name in names[1:]:
        if tensors[name].device != first:
            raise ValueError(f"{name} must be on the same device as {names[0]} ({first}), got {tensors[name].device}")


def compute_dtype(tensor):
    """The dtype an op computes in for activations of `tensor`'s dtype: low precision is computed in
    float32, float64 stays float64. Small parameter-like inputs (theta, delta) are cast to it before
    they reach a kernel, so kernels see one compute dtype."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32
