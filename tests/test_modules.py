"""The heads: SC-STN / STN (shapes, identity at init, bounds), VCN and its variants (Eq. 6-7 against
hand-written sums), the Table 3 replacement heads, the global branch and the BNNeck."""

import math

import pytest
import torch
import torch.nn.functional as F

from scstn_vcn.modules import (
    SCSTN,
    STN,
    VCN,
    BNNeck,
    FCHead,
    GlobalBranch,
    GPHead,
    MGNStripeHead,
    SharedVCN,
    VCNNoHPool,
    affine_resample,
)

IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def _perturb(module, scale=3.0):
    """Move the localisation net off its identity init so the transform depends on the input."""
    torch.manual_seed(1)
    with torch.no_grad():
        module.bn2.weight.normal_(0.0, scale)
        module.bn2.bias.normal_(0.0, scale)


def _refined_hpool(M, theta):
    """Eq. 6 by hand: grid_sample, then mean over w + max over w."""
    grid = F.affine_grid(theta, list(M.shape), align_corners=False)
    r = F.grid_sample(M, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return r.mean(-1) + r.amax(-1)


# --- SC-STN ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
def test_scstn_is_identity_at_init(train):
    stn = SCSTN(6, 4).train(train)
    theta = stn(torch.randn(5, 6, 4) * 10)
    assert theta.shape == (5, 2, 3)
    torch.testing.assert_close(theta, IDENTITY.expand(5, 2, 3), rtol=0, atol=0)


def test_scstn_parameter_count_matches_the_paper():
    # FC1 192->128 (24,704) + BN1 (256) + FC2 128->5 (645) + BN2 (10) = 25,615 (Table 4, 24 x 8 map).
    assert sum(p.numel() for p in SCSTN(24, 8).parameters()) == 25_615


@pytest.mark.parametrize("eps_max", [0.4, 1.0])
def test_scstn_factors_stay_in_their_bounds(eps_max):
    stn = SCSTN(6, 4, eps_max=eps_max)
    _perturb(stn, scale=20.0)  # saturate tanh: the bounds must still hold (closed: tanh rounds to +-1)
    eps, s_w, s_h, t_w, t_h = stn.factors(torch.randn(64, 6, 4))
    assert (eps >= 0).all() and (eps <= eps_max).all() and eps.std() > 0.1 * eps_max
    for s in (s_w, s_h):
        assert ((s - 1).abs() <= eps + 1e-6).all()  # 1e-6: rounding of 1 + eps x in float32
    for t in (t_w, t_h):
        assert (t.abs() <= eps + 1e-6).all()
    theta = stn(torch.randn(64, 6, 4))
    assert (theta[:, 0, 1] == 0).all() and (theta[:, 1, 0] == 0).all()  # no rotation


def test_scstn_layout_of_theta():
    stn = SCSTN(6, 4)
    _perturb(stn)
    cmean = torch.randn(8, 6, 4)
    stn.eval()
    _, s_w, s_h, t_w, t_h = stn.factors(cmean)
    theta = stn(cmean)
    torch.testing.assert_close(theta[:, 0, 0], s_w)
    torch.testing.assert_close(theta[:, 1, 1], s_h)
    torch.testing.assert_close(theta[:, 0, 2], t_w)
    torch.testing.assert_close(theta[:, 1, 2], t_h)


def test_scstn_fixed_eps():
    stn = SCSTN(6, 4, learn_eps=False)
    assert stn.fc2.out_features == 4
    _perturb(stn)
    eps, *_ = stn.factors(torch.randn(8, 6, 4))
    torch.testing.assert_close(eps, torch.full((8,), 0.4))


def test_scstn_rejects_a_wrong_map_size():
    with pytest.raises(ValueError, match=r"cmean must have shape \(B, 6, 4\)"):
        SCSTN(6, 4)(torch.randn(2, 4, 6))
    with pytest.raises(ValueError, match="eps_max"):
        SCSTN(6, 4, eps_max=0.0)


# --- plain STN --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rotation", [True, False])
def test_stn_identity_at_init_and_free_factors(rotation):
    stn = STN(6, 4, rotation=rotation)
    assert stn.fc2.out_features == (6 if rotation else 4)
    torch.testing.assert_close(stn(torch.randn(4, 6, 4)), IDENTITY.expand(4, 2, 3), rtol=0, atol=0)
    _perturb(stn, scale=5.0)
    theta = stn(torch.randn(64, 6, 4))
    off_diagonal = torch.stack([theta[:, 0, 1], theta[:, 1, 0]])
    if rotation:
        assert off_diagonal.abs().max() > 0.5
    else:
        assert (off_diagonal == 0).all()
    # unconstrained: factors go beyond SC-STN's (0.6, 1.4) scale range
    assert (theta[:, 0, 0] - 1).abs().max() > 1.0


# --- VCN ----------------------------------------------------------------------------------------------


def test_vcn_matches_eq6_eq7_by_hand():
    torch.manual_seed(0)
    B, C, H, W, K = 2, 3, 5, 4, 6
    vcn = VCN(C, H, K)
    M = torch.randn(B, C, H, W)
    theta = IDENTITY.expand(B, 2, 3) + 0.1 * torch.randn(B, 2, 3)
    f = vcn(M, theta)
    assert f.shape == (B, C * K)
    Fmap = _refined_hpool(M, theta)
    for b in range(B):
        for c in range(C):
            for k in range(K):
                expected = sum(Fmap[b, c, h] * vcn.delta[c, k, h] for h in range(H))
                torch.testing.assert_close(f[b, c * K + k], expected, atol=1e-5, rtol=1e-5)


def test_vcn_without_theta_pools_m_itself():
    torch.manual_seed(0)
    vcn = VCN(3, 5, 2)
    M = torch.randn(2, 3, 5, 4)
    expected = torch.einsum("bch,ckh->bck", M.mean(-1) + M.amax(-1), vcn.delta).flatten(1)
    torch.testing.assert_close(vcn(M, None), expected)
    # the identity transform resamples M onto itself: same result through the fused op
    torch.testing.assert_close(vcn(M, IDENTITY.expand(2, 2, 3)), expected, atol=1e-5, rtol=1e-5)


def test_vcn_parameter_count_and_init():
    vcn = VCN(2048, 24, 6)
    assert vcn.delta.shape == (2048, 6, 24) and vcn.delta.numel() == 294_912
    assert abs(vcn.delta.mean().item()) < 0.01
    assert vcn.delta.std().item() == pytest.approx(1 / math.sqrt(24), rel=0.02)


def test_vcn_stripe_init_averages_bands():
    vcn = VCN(2, 6, 3, delta_init="stripes")
    M = torch.arange(2 * 6 * 1, dtype=torch.float32).view(1, 2, 6, 1)  # W = 1: F = 2 M
    f = vcn(M, None).view(2, 3)
    Fmap = 2 * M[0, :, :, 0]
    expected = torch.stack([Fmap[:, 0:2].mean(1), Fmap[:, 2:4].mean(1), Fmap[:, 4:6].mean(1)], dim=1)
    torch.testing.assert_close(f, expected)
    with pytest.raises(ValueError, match="delta_init"):
        VCN(2, 6, 3, delta_init="zeros")


def test_shared_vcn_is_vcn_with_the_same_kernels_in_every_channel():
    torch.manual_seed(0)
    shared = SharedVCN(4, 5, 3)
    assert shared.delta.shape == (3, 5)
    full = VCN(4, 5, 3)
    with torch.no_grad():
        full.delta.copy_(shared.delta.expand(4, 3, 5))
    M, theta = torch.randn(2, 4, 5, 3), IDENTITY.expand(2, 2, 3) * 0.9
    torch.testing.assert_close(shared(M, theta), full(M, theta), atol=1e-5, rtol=1e-5)


def test_vcn_without_hpool_sums_over_the_whole_map():
    torch.manual_seed(0)
    B, C, H, W, K = 2, 3, 4, 5, 2
    head = VCNNoHPool(C, H, W, K)
    assert head.delta.shape == (C, K, H, W)
    M = torch.randn(B, C, H, W)
    theta = IDENTITY.expand(B, 2, 3) * 1.1
    refined = affine_resample(M, theta)
    f = head(M, theta).view(B, C, K)
    b, c, k = 1, 2, 1
    expected = sum(refined[b, c, h, w] * head.delta[c, k, h, w] for h in range(H) for w in range(W))
    torch.testing.assert_close(f[b, c, k], expected, atol=1e-5, rtol=1e-5)


# --- the Table 3 replacements -------------------------------------------------------------------------


def test_gp_head_is_gap_plus_gmp_of_the_refined_map():
    M = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(GPHead(3)(M, None), M.mean((2, 3)) + M.amax((2, 3)))
    theta = IDENTITY.expand(2, 2, 3) * 0.7
    r = affine_resample(M, theta)
    torch.testing.assert_close(GPHead(3)(M, theta), r.mean((2, 3)) + r.amax((2, 3)))


def test_fc_head_lengthens_gp_to_c_times_k():
    head = FCHead(2048, 12_288)
    assert head.fc.weight.shape == (12_288, 2048) and head.fc.bias is None
    small = FCHead(3, 18)
    M = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(small(M, None), (M.mean((2, 3)) + M.amax((2, 3))) @ small.fc.weight.t())


def test_mgn_head_max_pools_two_and_three_stripes():
    M = torch.randn(2, 3, 6, 4)
    f = MGNStripeHead(3, 6)(M, None)
    assert f.shape == (2, 5 * 3)
    stripes = [M[:, :, 0:3], M[:, :, 3:6], M[:, :, 0:2], M[:, :, 2:4], M[:, :, 4:6]]
    expected = torch.cat([s.amax((2, 3)) for s in stripes], dim=1)
    torch.testing.assert_close(f, expected)


# --- global branch and BNNeck ------------------------------------------------------------------------


def test_bnneck_frozen_bias_and_bias_free_classifier():
    neck = BNNeck(8, 5)
    assert not neck.bn.bias.requires_grad and neck.bn.weight.requires_grad
    assert neck.classifier.bias is None and neck.classifier.weight.shape == (5, 8)
    x = torch.randn(6, 8) * 3 + 2
    f, logits = neck(x)
    torch.testing.assert_close(f, (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, f @ neck.classifier.weight.t())
    logits.sum().backward()
    assert neck.bn.bias.grad is None
    f_only, none = BNNeck(8)(x)
    assert none is None and f_only.shape == (6, 8)


def test_global_branch_shapes_and_errors():
    branch = GlobalBranch(16, 7).eval()
    f, logits = branch(torch.randn(3, 16))
    assert f.shape == (3, 16) and logits.shape == (3, 7)
    with pytest.raises(ValueError, match=r"gpool must have shape \(B, 16\)"):
        branch(torch.randn(3, 8))
