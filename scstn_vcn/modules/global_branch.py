r"""The global feature branch (Sec. 3.1): GAP + GMP of the feature map M, then a BNNeck.

    g   = (1 / HW) \sum_{h,w} M(c,h,w) + \max_{h,w} M(c,h,w)     (ops.channel_pool's gpool)
    f^g = BN(g);  logits = FC(f^g)                               (FC: C -> N_id, no bias)

The pooling itself is not done here: the model calls ops.channel_pool(M) once and hands gpool to this
branch and cmean to SC-STN, so both come from one read of M (one fused kernel on the fast backends).
"""

from torch import nn

from scstn_vcn.modules.bnneck import BNNeck


class GlobalBranch(nn.Module):
    """gpool (B, C) -> (f^g (B, C) after BN, logits (B, N_id) or None)."""

    def __init__(self, channels, num_classes=None):
        super().__init__()
        self.out_features = channels
        self.neck = BNNeck(channels, num_classes)

    def forward(self, gpool):
        if gpool.dim() != 2 or gpool.shape[1] != self.out_features:
            raise ValueError(f"gpool must have shape (B, {self.out_features}), got {tuple(gpool.shape)}")
        return self.neck(gpool)
