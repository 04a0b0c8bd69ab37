"""What the general affine_hpool and its separable (rotation-free) form share: the input checks, the eager
grid-sample reference, and the fake functions and autograd context of their registered ops, which have the
same signatures and save the same tensors. Both op modules import this one; neither imports the other's
internals (ops/affine_hpool.py dispatches rotation_free=True down to ops/affine_hpool_separable.py)."""

import torch
import torch.nn.functional as F

from scstn_vcn.ops._checks import check_same_device, check_size, check_tensor, compute_dtype


def affine_hpool_eager(x, theta):
    """The reference: torch's affine_grid + grid_sample, then mean + max over w."""
    dtype = compute_dtype(x)
    grid = F.affine_grid(theta.to(dtype), list(x.shape), align_corners=False)
    resampled = F.grid_sample(x.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = resampled.mean(dim=-1) + resampled.max(dim=-1).values
    return out.to(x.dtype)


def fake_forward(x, theta):
    batch, channels, height, _ = x.shape
    return x.new_empty((batch, channels, height)), x.new_empty((batch, channels, height), dtype=torch.int32)


def fake_backward(grad_out, x, theta, argmax):
    return x.new_empty(x.shape), theta.new_empty(theta.shape)


def setup_context(ctx, inputs, output):
    x, theta = inputs
    ctx.save_for_backward(x, theta, output[1])


def check_inputs(x, theta):
    check_tensor(x, "x", 4, "(B, C, H, W)")
    check_tensor(theta, "theta", 3, "(B, 2, 3)")
    check_size("theta", tuple(theta.shape), (x.shape[0], 2, 3), f"shape (B, 2, 3) = {(x.shape[0], 2, 3)} to match x")
    check_same_device(x=x, theta=theta)
