r"""SC-STN: the self-constrained spatial transformer network (Sec. 3.2, Eq. 3-5).

Input: the channel mean of the feature map, f^stn(h, w) = (1/C) \sum_c M(c, h, w) (Eq. 3), which the
model takes from ops.channel_pool (its `cmean`), shape (B, H, W). Then (Eq. 4)

    (x1, x2, x3, x4, x5) = tanh(BN2(FC2(ReLU(BN1(FC1(flatten(f^stn)))))))     FC1: HW -> 128, FC2: 128 -> 5

and (Eq. 5)

    eps = eps_max * (x1 + 1) / 2   in (0, eps_max)          (eps_max = 0.4: the detection-error bound)
    s_w = 1 + eps x2,  s_h = 1 + eps x3,  t_w = eps x4,  t_h = eps x5
    theta = [[s_w, 0, t_w], [0, s_h, t_h]]                  (no rotation)

theta maps output coordinates (w, h, 1), normalised to [-1, 1], to source coordinates in M, the
convention of torch's affine_grid (align_corners=False).

Variants for Table 3:
  eps_max=1.0                "SC-STN (eps in (0, 1))": the 0.4 prior removed.
  learn_eps=False            "SC-STN (eps = 0.4)": eps fixed at eps_max, FC2 has 4 outputs (x2..x5).

Identity at initialisation: BN2's weight starts at 0, so BN2's output is its bias (0), x = 0, and
theta = [[1, 0, 0], [0, 1, 0]] whatever the input; the branch then learns to move away from the
identity, which is a safe start (the VCN first sees the unrefined map).

rotation_free = True: theta's off-diagonal entries are 0 by construction (in every variant), so the model
resamples with the separable path (ops.affine_hpool(..., rotation_free=True)).
"""

import torch
from torch import nn


class SCSTN(nn.Module):
    """cmean (B, H, W) -> theta (B, 2, 3), the self-constrained scale+translation of Eq. 5."""

    def __init__(self, height, width, hidden=128, eps_max=0.4, learn_eps=True):
        super().__init__()
        if height < 1 or width < 1:
            raise ValueError(f"height and width must be the positive feature-map size, got {height} x {width}")
        if not 0.0 < eps_max <= 1.0:
            raise ValueError(f"eps_max must be in (0, 1] (the bound on the detection error), got {eps_max}")
        self.height, self.width = height, width
        self.eps_max = float(eps_max)
        self.learn_eps = bool(learn_eps)
        self.rotation_free = True  # Eq. 5 has no rotation or shear term
        outputs = 5 if self.learn_eps else 4
        self.fc1 = nn.Linear(height * width, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, outputs)
        self.bn2 = nn.BatchNorm1d(outputs)
        nn.init.zeros_(self.bn2.weight)  # identity transform at init (see the module docstring)
        nn.init.zeros_(self.bn2.bias)

    def factors(self, cmean):
        """(eps, s_w, s_h, t_w, t_h), each (B,), for cmean (B, H, W)."""
        if cmean.dim() != 3 or tuple(cmean.shape[1:]) != (self.height, self.width):
            raise ValueError(
                f"cmean must have shape (B, {self.height}, {self.width}) (the channel mean of the feature map), "
                f"got {tuple(cmean.shape)}"
            )
        x = torch.tanh(self.bn2(self.fc2(torch.relu(self.bn1(self.fc1(cmean.flatten(1)))))))
        if self.learn_eps:
            eps = self.eps_max * (x[:, 0] + 1.0) / 2.0
            x = x[:, 1:]
        else:
            eps = x.new_full((x.shape[0],), self.eps_max)
        return eps, 1.0 + eps * x[:, 0], 1.0 + eps * x[:, 1], eps * x[:, 2], eps * x[:, 3]

    def forward(self, cmean):
        _, s_w, s_h, t_w, t_h = self.factors(cmean)
        zero = torch.zeros_like(s_w)
        return torch.stack([s_w, zero, t_w, zero, s_h, t_h], dim=1).view(-1, 2, 3)
