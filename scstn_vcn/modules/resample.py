r"""The refined feature map M^r = M resampled by theta (Eq. 1), for the heads that need all of it.

    grid = affine_grid(theta, M.shape, align_corners=False)
    M^r  = grid_sample(M, grid, bilinear, zeros padding, align_corners=False)

VCN never materialises M^r (ops.affine_hpool fuses the resampling with the horizontal pooling); the
Table 3 replacements (GP, FC, MGN stripes, VCN without horizontal pooling) need the whole map, so they
use these eager torch ops. theta=None (no STN in the model) returns M itself. rotation_free=True (the
transformer never rotates) takes theta's off-diagonal entries as 0, as ops.affine_hpool(...,
rotation_free=True) does, so that every head sees the same transform.
"""

import torch.nn.functional as F

from scstn_vcn.ops.affine_hpool_separable import rotation_free_theta


def affine_resample(M, theta, rotation_free=False):
    """M^r (B, C, H, W) of M (B, C, H, W) under theta (B, 2, 3); M itself when theta is None."""
    if theta is None:
        return M
    if theta.shape != (M.shape[0], 2, 3):
        raise ValueError(f"theta must have shape (B, 2, 3) = {(M.shape[0], 2, 3)} to match M, got {tuple(theta.shape)}")
    if rotation_free:
        theta = rotation_free_theta(theta)
    grid = F.affine_grid(theta.to(M.dtype), list(M.shape), align_corners=False)
    return F.grid_sample(M, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
