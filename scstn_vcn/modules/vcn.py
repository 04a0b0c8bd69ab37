r"""VCN: the vertical convolution network (Sec. 3.2, Eq. 6-7) and the two variants of Table 3.

    F(c, h)  = (1/W) \sum_w M^r(c, h, w) + \max_w M^r(c, h, w)       (Eq. 6, horizontal pooling)
    f^c(k)   = \sum_h F(c, h) delta_k^c(h),   k = 1..K                (Eq. 7)
    f^s      = concat_c f^c  in R^{C K},  index c K + k

VCN            delta (C, K, H): K kernels per channel, independent across channels (the paper's).
               F comes from ops.affine_hpool(M, theta) (resampling fused with the pooling: M^r is never
               stored) and f from ops.vertical_proj; both with backend=None so ops.set_backend switches
               them. rotation_free=True (the transformer never rotates: SC-STN) runs affine_hpool's
               separable path (ops.affine_hpool(M, theta, rotation_free=True)). Without an STN
               (theta=None, "Baseline+VCN") F is pooled from M with eager torch ops.
SharedVCN      "VCN (shared)": one set of K kernels delta (K, H) for all channels,
               f^c(k) = \sum_h F(c, h) delta_k(h).
VCNNoHPool     "VCN (w/o HP)": no horizontal pooling; the kernels cover the whole refined map,
               delta (C, K, H, W), f^c(k) = \sum_{h,w} M^r(c, h, w) delta_k^c(h, w).
The two variants use eager torch ops (the fused ops implement only the paper's VCN).

Initialisation of delta (the paper says only "initialised randomly"): i.i.d. N(0, 1/H_eff), with
H_eff the number of taps a kernel sums over (H, or H W without horizontal pooling). This is the
fan-in scaling of a linear layer: f^c(k) then has about the spread of F(c, .) itself, so the BN that
follows f^s starts in a normal range and delta's gradients are neither vanishing nor exploding;
zero-mean random kernels (unlike equal or stripe-shaped ones) differ from each other from the start,
so the K patterns of a channel do not receive identical gradients. delta_init="stripes" is offered as
a structured alternative: kernel k averages the k-th of K horizontal bands (so VCN starts as a
PCB-like 6-stripe pooling and learns finer patterns from there).
"""

import math

import torch
from torch import nn

from scstn_vcn import ops
from scstn_vcn.modules.resample import affine_resample


def _stripe_kernels(num_kernels, height):
    """(K, H): kernel k = 1/|band k| on the rows of the k-th of K (near-)equal horizontal bands."""
    if num_kernels > height:
        raise ValueError(f"delta_init='stripes' needs num_kernels <= height, got K={num_kernels} > H={height}")
    bands = torch.zeros(num_kernels, height)
    edges = [round(i * height / num_kernels) for i in range(num_kernels + 1)]
    for k in range(num_kernels):
        bands[k, edges[k] : edges[k + 1]] = 1.0 / (edges[k + 1] - edges[k])
    return bands


def _init_delta(delta, taps, delta_init, height):
    if delta_init == "random":
        nn.init.normal_(delta, std=1.0 / math.sqrt(taps))
    elif delta_init == "stripes":
        if delta.dim() == 4:
            raise ValueError("delta_init='stripes' needs horizontally pooled kernels, not VCNNoHPool's (C, K, H, W)")
        with torch.no_grad():
            delta.copy_(_stripe_kernels(delta.shape[-2], height).expand_as(delta))
    else:
        raise ValueError(f"delta_init must be 'random' or 'stripes', got {delta_init!r}")


def horizontal_pool(M):
    """F (B, C, H) = mean_w M + max_w M, eager (Eq. 6 on the unrefined map)."""
    return M.mean(dim=-1) + M.amax(dim=-1)


class VCN(nn.Module):
    """(M (B, C, H, W), theta (B, 2, 3) or None) -> f^s (B, C*K), index c*K + k."""

    def __init__(self, channels, height, num_kernels=6, delta_init="random"):
        super().__init__()
        self.channels, self.height, self.num_kernels = channels, height, num_kernels
        self.out_features = channels * num_kernels
        self.delta = nn.Parameter(torch.empty(channels, num_kernels, height))
        _init_delta(self.delta, height, delta_init, height)

    def pooled(self, M, theta, rotation_free=False):
        """F (B, C, H): Eq. 6 on M resampled by theta (fused), or on M itself when theta is None.
        rotation_free: theta has no rotation or shear by construction (the separable path)."""
        if theta is None:
            return horizontal_pool(M)
        return ops.affine_hpool(M, theta, rotation_free=rotation_free)

    def forward(self, M, theta=None, rotation_free=False):
        F = self.pooled(M, theta, rotation_free)
        return ops.vertical_proj(F, self.delta).flatten(1)


class SharedVCN(VCN):
    """VCN with one set of K kernels delta (K, H) shared by all channels."""

    def __init__(self, channels, height, num_kernels=6, delta_init="random"):
        nn.Module.__init__(self)
        self.channels, self.height, self.num_kernels = channels, height, num_kernels
        self.out_features = channels * num_kernels
        self.delta = nn.Parameter(torch.empty(num_kernels, height))
        _init_delta(self.delta, height, delta_init, height)

    def forward(self, M, theta=None, rotation_free=False):
        F = self.pooled(M, theta, rotation_free)
        return torch.einsum("bch,kh->bck", F, self.delta.to(F.dtype)).flatten(1)


class VCNNoHPool(nn.Module):
    """VCN without horizontal pooling: kernels delta (C, K, H, W) over the whole refined map."""

    def __init__(self, channels, height, width, num_kernels=6, delta_init="random"):
        super().__init__()
        self.channels, self.height, self.width, self.num_kernels = channels, height, width, num_kernels
        self.out_features = channels * num_kernels
        self.delta = nn.Parameter(torch.empty(channels, num_kernels, height, width))
        _init_delta(self.delta, height * width, delta_init, height)

    def forward(self, M, theta=None, rotation_free=False):
        refined = affine_resample(M, theta, rotation_free)
        return torch.einsum("bchw,ckhw->bck", refined, self.delta.to(refined.dtype)).flatten(1)
