r"""channel_pool: the channel mean that feeds SC-STN and the global pooling, from one read of x.

Forward, for x of shape (B, C, H, W):

    cmean[b, h, w] = (1 / C)     * \sum_c x[b, c, h, w]                      (Eq. 3, SC-STN input)
    gpool[b, c]    = (1 / (H W)) * \sum_{h,w} x[b, c, h, w] + \max_{h,w} x[b, c, h, w]   (GAP + GMP)

Backward, with g_m = dL/dcmean and g_p = dL/dgpool:

    dx[b, c, h, w] = g_m[b, h, w] / C + g_p[b, c] / (H W) + g_p[b, c] * [h W + w == argmax[b, c]]

where argmax[b, c] is the flat index h*W + w of the FIRST maximal element in row-major order (the one
torch.max returns on the CPU): the gradient of the max goes to that one element only.

Low-precision inputs are computed in float32 and returned in the input dtype.
"""

import torch

from scstn_vcn.ops._backend import op_namespace, resolve
from scstn_vcn.ops._checks import check_tensor, compute_dtype


def channel_pool_eager(x):
    """The reference: composed of torch ops, differentiated by torch's autograd."""
    xc = x.to(compute_dtype(x))
    cmean = xc.mean(dim=1)
    flat = xc.flatten(2)
    gpool = flat.mean(dim=-1) + flat.max(dim=-1).values
    return cmean.to(x.dtype), gpool.to(x.dtype)


# --- the registered ops' fake functions and autograd formula (shared by the native and Triton ops) ---


def fake_forward(x):
    batch, channels, height, width = x.shape
    return (
        x.new_empty((batch, height, width)),
        x.new_empty((batch, channels)),
        x.new_empty((batch, channels), dtype=torch.int32),
    )


def fake_backward(grad_cmean, grad_gpool, argmax, x):
    return x.new_empty(x.shape)


def setup_context(ctx, inputs, output):
    (x,) = inputs
    ctx.save_for_backward(output[2], x)


def make_backward(namespace):
    def backward(ctx, grad_cmean, grad_gpool, _grad_argmax):
        argmax, x = ctx.saved_tensors
        return namespace().channel_pool_backward(grad_cmean.contiguous(), grad_gpool.contiguous(), argmax, x)

    return backward


def check_inputs(x):
    check_tensor(x, "x", 4, "(B, C, H, W)")


def channel_pool(x, *, backend=None):
    """(cmean (B, H, W), gpool (B, C)) of x (B, C, H, W); see the module docstring for the math.

    backend: "eager", "triton" or "native"; None takes the process-wide setting (set_backend).
    """
    check_inputs(x)
    name = resolve(backend, x.device)
    if name == "eager":
        return channel_pool_eager(x)
    cmean, gpool, _ = op_namespace(name).channel_pool(x)
    return cmean, gpool
