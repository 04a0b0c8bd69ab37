r"""Ranked list loss (Wang et al., "Ranked List Loss for Deep Metric Learning", CVPR 2019).

Features are L2-normalised and compared by Euclidean distance d_ij = ||x_i - x_j||_2 (in [0, 2]).
For each anchor i in the batch, with P_i its positives (same label, j != i) and N_i its negatives:

    pairwise margin loss   L_m(i, j) = [d_ij - (alpha - m)]_+   for j in P_i  (pull inside alpha - m)
                           L_m(i, j) = [alpha - d_ij]_+         for j in N_i  (push beyond alpha)
    non-trivial sets       P*_i = {j in P_i : d_ij > alpha - m},   N*_i = {j in N_i : d_ij < alpha}
    L_P(i) = (1 / |P*_i|) \sum_{j in P*_i} L_m(i, j)                                (0 if P*_i is empty)
    L_N(i) = \sum_{j in N*_i} w_ij L_m(i, j) / \sum_{j in N*_i} w_ij,   w_ij = exp(T (alpha - d_ij))   (0 if empty)
    L      = (1 / B) \sum_i (L_P(i) + lam L_N(i))

Defaults: alpha = 1.2 (negative boundary), m = 0.4 (so positives are pulled within 0.8), T = 10, lam = 1.
These are the settings the RLL paper reports for its retrieval experiments as recalled here (boundary 1.2,
margin 0.4, temperature 10 for the negative weighting, balance 1 between the positive and negative
sets); the RLL paper's text was not available to re-check them, and the SC-STN paper does not give
its own, so all four are arguments. As in the RLL paper's gradient analysis,
the weights w_ij only weight the pairs: they are treated as constants (detach_weights=True); set False
to differentiate through them too. The loss value is the same either way.
"""

import torch
import torch.nn.functional as F
from torch import nn


class RankedListLoss(nn.Module):
    """RankedListLoss(margin=0.4, alpha=1.2, tval=10)(features (B, D), labels (B,)) -> scalar."""

    def __init__(self, margin=0.4, alpha=1.2, tval=10.0, lam=1.0, detach_weights=True):
        super().__init__()
        if not 0.0 < margin <= alpha:
            raise ValueError(f"margin must be in (0, alpha={alpha}], got {margin}")
        if not 0.0 < alpha <= 2.0:
            raise ValueError(f"alpha must be in (0, 2] (distances of unit vectors lie in [0, 2]), got {alpha}")
        if tval < 0:
            raise ValueError(f"tval (the temperature T) must be >= 0, got {tval}")
        self.margin, self.alpha, self.tval, self.lam = float(margin), float(alpha), float(tval), float(lam)
        self.detach_weights = bool(detach_weights)

    def forward(self, features, labels):
        if features.dim() != 2:
            raise ValueError(f"features must have shape (B, D), got {tuple(features.shape)}")
        if labels.shape != features.shape[:1]:
            raise ValueError(f"labels must have shape (B,) = ({features.shape[0]},), got {tuple(labels.shape)}")
        # float32 and float64 features keep their precision; half / bfloat16 are upcast, as their
        # rounding (about 1e-2 on distances in [0, 2]) is as large as the margins being compared.
        if features.dtype in (torch.float16, torch.bfloat16) or not features.is_floating_point():
            features = features.float()
        # Autocast (CUDA training with --amp) would run the Gram matrix below in half precision again.
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = F.normalize(features, dim=1)
            # d^2 = 2 - 2 cos for unit vectors; clamp before sqrt (0 on the diagonal has an infinite
            # derivative, and rounding can make d^2 slightly negative).
            dist = (2.0 - 2.0 * x @ x.t()).clamp_min(1e-12).sqrt()
        same = labels.view(-1, 1) == labels.view(1, -1)
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos, neg = same & ~eye, ~same

        pos_boundary = self.alpha - self.margin
        pos_active = pos & (dist > pos_boundary)
        pos_loss = torch.where(pos_active, dist - pos_boundary, torch.zeros_like(dist)).sum(1)
        loss_p = pos_loss / pos_active.sum(1).clamp_min(1)

        neg_active = neg & (dist < self.alpha)
        logits = self.tval * (self.alpha - dist)
        if self.detach_weights:
            logits = logits.detach()
        # w_ij / sum_j w_ij as a masked softmax: stable for large T (no overflow of exp).
        weights = torch.softmax(logits.masked_fill(~neg_active, float("-inf")), dim=1)
        weights = torch.where(neg_active, weights, torch.zeros_like(weights))  # rows with no active negative
        loss_n = (weights * (self.alpha - dist)).sum(1)
        return (loss_p + self.lam * loss_n).mean()
