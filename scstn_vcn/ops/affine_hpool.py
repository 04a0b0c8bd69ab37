r"""affine_hpool: affine resampling of the feature map and horizontal avg+max pooling, in one pass.

Forward, for x of shape (B, C, H, W) and any affine theta of shape (B, 2, 3) (Eq. 1, 6):

    r = grid_sample(x, affine_grid(theta, (B, C, H, W), align_corners=False),
                    mode="bilinear", padding_mode="zeros", align_corners=False)
    out[b, c, h] = (1 / W) * \sum_w r[b, c, h, w] + \max_w r[b, c, h, w]

Written out: the output pixel (h, w) has normalised coordinates u_w = (2w + 1) / W - 1,
v_h = (2h + 1) / H - 1; it samples x at gx = theta[b,0,0] u_w + theta[b,0,1] v_h + theta[b,0,2],
gy = theta[b,1,0] u_w + theta[b,1,1] v_h + theta[b,1,2], i.e. at pixel coordinates
ix = ((gx + 1) W - 1) / 2, iy = ((gy + 1) H - 1) / 2, bilinearly from the four neighbours
(floor(ix) + {0,1}, floor(iy) + {0,1}); neighbours outside the map count as 0.

Backward, with g = dL/dout and a[b,c,h] = the w of the FIRST maximum of r's row (int32 argmax):

    dr[b, c, h, w] = g[b, c, h] / W + g[b, c, h] * [w == a[b, c, h]]
    dx     = the bilinear scatter of dr back to the four neighbours of each sample
    dtheta = \sum_{c,h,w} dr * (dr/d(ix, iy)) * (d(ix, iy)/dtheta), with
             d ix / d gx = W / 2, d iy / d gy = H / 2, d gx / d theta[0] = (u_w, v_h, 1), likewise gy.

The resampled map r is never written by the fused backends. x may be float16/bfloat16/float32/float64
(low precision computed in float32, returned in x's dtype); theta is cast to the compute dtype before it
reaches a kernel, and its gradient flows back through that cast.
"""

import scstn_vcn.ops.affine_hpool_separable as separable
from scstn_vcn.ops._affine_common import affine_hpool_eager, check_inputs, fake_backward, fake_forward, setup_context
from scstn_vcn.ops._backend import op_namespace, resolve
from scstn_vcn.ops._checks import compute_dtype

# The reference, the input checks and the fake/autograd contract are shared with the separable op
# (ops/_affine_common.py); they are this module's attributes too, as ops/_wiring.py expects of every op.
__all__ = [
    "affine_hpool",
    "affine_hpool_eager",
    "check_inputs",
    "fake_backward",
    "fake_forward",
    "make_backward",
    "setup_context",
]


def make_backward(namespace):
    def backward(ctx, grad_out, _grad_argmax):
        x, theta, argmax = ctx.saved_tensors
        return namespace().affine_hpool_backward(grad_out.contiguous(), x, theta, argmax)

    return backward


def affine_hpool(x, theta, *, rotation_free=False, backend=None):
    """out (B, C, H): horizontal mean + max of x (B, C, H, W) resampled by the affine theta (B, 2, 3).

    rotation_free: True computes the op for theta with its off-diagonal entries theta[:, 0, 1] and
        theta[:, 1, 0] taken as 0 (not read; their gradient is 0), by the separable row/column
        interpolation of ops.affine_hpool_separable -- for a transformer that never rotates (SC-STN).
        The caller decides; theta's values are never inspected (no device-to-host sync).
    backend: "eager", "triton" or "native"; None takes the process-wide setting (set_backend).
    """
    if rotation_free:
        return separable.affine_hpool_separable(x, theta, backend=backend)
    check_inputs(x, theta)
    name = resolve(backend, x.device)
    if name == "eager":
        return affine_hpool_eager(x, theta)
    out, _ = op_namespace(name).affine_hpool(x, theta.to(compute_dtype(x)).contiguous())
    return out
