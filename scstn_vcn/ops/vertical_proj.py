r"""vertical_proj: the VCN's batched per-channel vertical projection (Eq. 7).

Forward, for F of shape (B, C, H) and K kernels per channel delta of shape (C, K, H):

    f[b, c, k] = \sum_h F[b, c, h] * delta[c, k, h]

Backward, with g = dL/df:

    dF[b, c, h]     = \sum_k g[b, c, k] * delta[c, k, h]
    ddelta[c, k, h] = \sum_b g[b, c, k] * F[b, c, h]      (reduced over b in a fixed order)

f is returned in F's dtype (low precision computed in float32); delta is cast to the compute dtype before
it reaches a kernel, and its gradient flows back through that cast.
"""

import torch

from scstn_vcn.ops._backend import op_namespace, resolve
from scstn_vcn.ops._checks import check_same_device, check_size, check_tensor, compute_dtype


def vertical_proj_eager(F, delta):
    """The reference: an einsum."""
    dtype = compute_dtype(F)
    return torch.einsum("bch,ckh->bck", F.to(dtype), delta.to(dtype)).to(F.dtype)


def fake_forward(F, delta):
    return F.new_empty((F.shape[0], F.shape[1], delta.shape[1]))


def fake_backward(grad_f, F, delta):
    return F.new_empty(F.shape), delta.new_empty(delta.shape)


def setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def make_backward(namespace):
    def backward(ctx, grad_f):
        F, delta = ctx.saved_tensors
        return namespace().vertical_proj_backward(grad_f.contiguous(), F, delta)

    return backward


def check_inputs(F, delta):
    check_tensor(F, "F", 3, "(B, C, H)")
    check_tensor(delta, "delta", 3, "(C, K, H)")
    channels, height = F.shape[1], F.shape[2]
    if delta.shape[0] != channels or delta.shape[2] != height:
        check_size(
            "delta", tuple(delta.shape), None, f"shape (C, K, H) with C = {channels} and H = {height} to match F"
        )
    check_same_device(F=F, delta=delta)


def vertical_proj(F, delta, *, backend=None):
    """f (B, C, K) = per-channel projections of F (B, C, H) on the K kernels delta (C, K, H).

    backend: "eager", "triton" or "native"; None takes the process-wide setting (set_backend).
    """
    check_inputs(F, delta)
    name = resolve(backend, F.device)
    if name == "eager":
        return vertical_proj_eager(F, delta)
    return op_namespace(name).vertical_proj(F.contiguous(), delta.to(compute_dtype(F)).contiguous())
