r"""affine_hpool_separable: affine_hpool for a theta without rotation or shear, which factorises.

This is what ops.affine_hpool(x, theta, rotation_free=True) runs. theta's off-diagonal entries
theta[:, 0, 1] and theta[:, 1, 0] are taken as 0 -- they are not read, and their gradient is 0 -- so
the result is affine_hpool(x, theta * [[1, 0, 1], [0, 1, 1]]). SC-STN's theta has this form by
construction (Eq. 5), as has the STN without rotation.

With t = theta[b] and t01 = t10 = 0, the sample of output pixel (h, w) (see affine_hpool's docstring
for the conventions: u_w = (2w + 1) / W - 1, v_h = (2h + 1) / H - 1, align_corners=False) lies at

    ix_w = ((t00 u_w + t02 + 1) W - 1) / 2          (a function of w alone)
    iy_h = ((t11 v_h + t12 + 1) H - 1) / 2          (a function of h alone)

so bilinear sampling factorises. Per image and channel, with X = x[b, c] (H, W),

    r = A_y X A_x^T
    A_y[h, y] = (1 - fy_h) [y = y0_h] + fy_h [y = y0_h + 1],   y0_h = floor(iy_h), fy_h = iy_h - y0_h
    A_x[w, j] = (1 - fx_w) [j = x0_w] + fx_w [j = x0_w + 1],   x0_w = floor(ix_w), fx_w = ix_w - x0_w

where a tap outside the map (y or j outside [0, H) or [0, W)) is dropped (zeros padding): each row of
A_y and A_x has at most two non-zeros.

Forward:  out[b, c, h] = (1 / W) \sum_w r[h, w] + \max_w r[h, w]
          argmax[b, c, h] = the w of the FIRST maximum of row h (int32).

Backward, with g = dL/dout, a = argmax and T = A_y X, S = X A_x^T:

    dR[h, w]  = g[h] / W + g[h] [w == a[h]]
    dX        = A_y^T dR A_x
    dL/dix_w  = \sum_{c,h} dR[h, w] (m1_w T[h, x0_w + 1] - m0_w T[h, x0_w])
    dL/diy_h  = \sum_{c,w} dR[h, w] (n1_h S[y0_h + 1, w] - n0_h S[y0_h, w])
    (m0, m1, n0, n1: 1 for a tap inside the map, 0 outside; the one-sided derivative at an integer
    coordinate follows the floor, as torch's grid_sample backward does)
    dtheta00 = (W/2) \sum_w u_w dL/dix_w      dtheta02 = (W/2) \sum_w dL/dix_w
    dtheta11 = (H/2) \sum_h v_h dL/diy_h      dtheta12 = (H/2) \sum_h dL/diy_h
    dtheta01 = dtheta10 = 0

No two-dimensional grid, per-sample floor or bounds test is needed: the taps are H + W per image.
x may be float16/bfloat16/float32/float64 (low precision computed in float32 and returned in x's
dtype); theta is cast to the compute dtype before it reaches a kernel, and its gradient flows back
through that cast. The registered ops have the general op's signatures:

    affine_hpool_separable(x, theta) -> (out (B, C, H), argmax (B, C, H) int32)
    affine_hpool_separable_backward(grad_out, x, theta, argmax)
        -> (grad_x (B, C, H, W) contiguous in x.dtype, grad_theta (B, 2, 3) contiguous in theta.dtype)
"""

import torch

from scstn_vcn.ops._affine_common import affine_hpool_eager, check_inputs, fake_backward, fake_forward, setup_context
from scstn_vcn.ops._backend import op_namespace, resolve
from scstn_vcn.ops._checks import compute_dtype

# The fake functions and autograd context are the general op's (same signatures and saved tensors),
# shared through ops/_affine_common.py; ops/_wiring.py reads them as this module's attributes.
__all__ = [
    "affine_hpool_separable",
    "affine_hpool_separable_eager",
    "fake_backward",
    "fake_forward",
    "make_backward",
    "rotation_free_theta",
    "setup_context",
]


def rotation_free_theta(theta):
    """theta with theta[:, 0, 1] and theta[:, 1, 0] set to 0 by a constant mask: their gradient is exactly 0."""
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=theta.dtype, device=theta.device)
    return theta * mask


def affine_hpool_separable_eager(x, theta):
    """The reference: the general eager reference on theta with its off-diagonal entries masked to 0."""
    return affine_hpool_eager(x, rotation_free_theta(theta))


def make_backward(namespace):
    def backward(ctx, grad_out, _grad_argmax):
        x, theta, argmax = ctx.saved_tensors
        return namespace().affine_hpool_separable_backward(grad_out.contiguous(), x, theta, argmax)

    return backward


def affine_hpool_separable(x, theta, *, backend=None):
    """out (B, C, H) of affine_hpool(x, theta) with theta's off-diagonal entries taken as 0 (the same as
    ops.affine_hpool(x, theta, rotation_free=True))."""
    check_inputs(x, theta)
    name = resolve(backend, x.device)
    if name == "eager":
        return affine_hpool_separable_eager(x, theta)
    out, _ = op_namespace(name).affine_hpool_separable(x, theta.to(compute_dtype(x)).contiguous())
    return out
