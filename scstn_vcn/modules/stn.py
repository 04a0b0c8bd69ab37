r"""The unconstrained spatial transformer (Jaderberg et al., 2015) that Table 3 compares SC-STN with.

Same localisation network as SC-STN (Eq. 4) but without the tanh and the detection-error bound: the
affine factors are learned directly (Fig. 3, top),

    x = BN2(FC2(ReLU(BN1(FC1(flatten(f^stn))))))                 FC2: 128 -> 6 (or 4)
    rotation=True  (6 free factors, "STN"):
        theta = [[1 + x1, x2, x3], [x4, 1 + x5, x6]]           (s_w, r_w, t_w; r_h, s_h, t_h)
    rotation=False ("STN (w/o rotate)": r_w = r_h = 0):
        theta = [[1 + x1, 0, x3], [0, 1 + x2, x4]]

Writing theta as identity + x (BN2's weight at 0) starts it at the identity like SC-STN, so the two
differ only in the constraint, which is what the ablation measures.

rotation_free (= not rotation) tells the model that theta's off-diagonal entries are 0 by construction,
so that it resamples with the separable path (ops.affine_hpool(..., rotation_free=True)).
"""

import torch
from torch import nn


class STN(nn.Module):
    """cmean (B, H, W) -> theta (B, 2, 3) with free (unbounded) affine factors."""

    def __init__(self, height, width, hidden=128, rotation=True):
        super().__init__()
        if height < 1 or width < 1:
            raise ValueError(f"height and width must be the positive feature-map size, got {height} x {width}")
        self.height, self.width = height, width
        self.rotation = bool(rotation)
        self.rotation_free = not self.rotation
        outputs = 6 if self.rotation else 4
        self.fc1 = nn.Linear(height * width, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, outputs)
        self.bn2 = nn.BatchNorm1d(outputs)
        nn.init.zeros_(self.bn2.weight)  # theta = identity at init
        nn.init.zeros_(self.bn2.bias)

    def forward(self, cmean):
        if cmean.dim() != 3 or tuple(cmean.shape[1:]) != (self.height, self.width):
            raise ValueError(
                f"cmean must have shape (B, {self.height}, {self.width}) (the channel mean of the feature map), "
                f"got {tuple(cmean.shape)}"
            )
        x = self.bn2(self.fc2(torch.relu(self.bn1(self.fc1(cmean.flatten(1))))))
        if not self.rotation:
            zero = torch.zeros_like(x[:, 0])
            x = torch.stack([x[:, 0], zero, x[:, 2], zero, x[:, 1], x[:, 3]], dim=1)
        identity = x.new_tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        return (identity + x).view(-1, 2, 3)
