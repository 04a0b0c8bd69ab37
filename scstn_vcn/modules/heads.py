r"""The replacements for VCN in Table 3 ("Effect of the VCN"); each maps (M, theta) to a flat feature.

GPHead          "SC-STN+GP": g = GAP(M^r) + GMP(M^r) in R^C (the global branch's pooling, on the
                refined map); computed with ops.channel_pool on M^r.
FCHead          "SC-STN+FC": GP, then FC(C -> C K) (12,288 outputs for C = 2048, K = 6) to lengthen
                the feature to VCN's length. No bias: the BN that follows would cancel it.
MGNStripeHead   "SC-STN+MGN": M^r cut into MGN's two granularities of horizontal stripes, 2 and 3
                (5 stripes), each max-pooled over its rows and all columns as MGN does, concatenated:
                f = [GMP(stripe_1^2), GMP(stripe_2^2), GMP(stripe_1^3), GMP(stripe_2^3), GMP(stripe_3^3)]
                in R^{5C}. MGN's per-stripe 1x1 reductions and per-stripe losses are left out: the paper
                concatenates the stripe features into one spatial feature with one BN and classifier,
                so this head differs from VCN only in how it pools M^r.
M^r = grid_sample(M, affine_grid(theta)) is materialised with eager torch ops (modules.resample);
rotation_free=True (the transformer never rotates) takes theta's off-diagonal entries as 0, as VCN does.
"""

import torch
import torch.nn.functional as F
from torch import nn

from scstn_vcn import ops
from scstn_vcn.modules.resample import affine_resample


class GPHead(nn.Module):
    """(M, theta) -> GAP(M^r) + GMP(M^r), (B, C)."""

    def __init__(self, channels):
        super().__init__()
        self.out_features = channels

    def forward(self, M, theta=None, rotation_free=False):
        _, gpool = ops.channel_pool(affine_resample(M, theta, rotation_free))
        return gpool


class FCHead(nn.Module):
    """(M, theta) -> FC(GAP(M^r) + GMP(M^r)), (B, out_features); out_features = C K = 12,288 in the paper."""

    def __init__(self, channels, out_features):
        super().__init__()
        self.out_features = out_features
        self.pool = GPHead(channels)
        self.fc = nn.Linear(channels, out_features, bias=False)

    def forward(self, M, theta=None, rotation_free=False):
        return self.fc(self.pool(M, theta, rotation_free))


class MGNStripeHead(nn.Module):
    """(M, theta) -> the max-pooled features of MGN's 2 + 3 horizontal stripes of M^r, (B, 5 C)."""

    def __init__(self, channels, height, granularities=(2, 3)):
        super().__init__()
        for parts in granularities:
            if not 1 <= parts <= height:
                raise ValueError(
                    f"each stripe count must be in [1, H={height}] (one row per stripe at least), got {parts}"
                )
        self.granularities = tuple(granularities)
        self.out_features = channels * sum(self.granularities)

    def forward(self, M, theta=None, rotation_free=False):
        refined = affine_resample(M, theta, rotation_free)
        # adaptive pooling cuts H into near-equal bands, as MGN cuts its map (exactly equal when H divides).
        stripes = [F.adaptive_max_pool2d(refined, (parts, 1)).flatten(2) for parts in self.granularities]
        # (B, C, parts) -> (B, parts, C): the feature of stripe i is the i-th block of C values.
        return torch.cat([s.transpose(1, 2).flatten(1) for s in stripes], dim=1)
