"""The losses on small cases whose values are worked out by hand in the comments."""

import math

import pytest
import torch
import torch.nn.functional as F

from scstn_vcn.losses import CrossEntropyLabelSmooth, RankedListLoss, ReIDLoss


def _unit(*degrees):
    """2-D unit vectors at the given angles; the distance of two is the chord 2 sin(|a - b| / 2)."""
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1)


def _chord(a, b):
    return 2 * math.sin(math.radians(abs(a - b)) / 2)


# --- label-smoothed cross entropy -----------------------------------------------------------------


def test_label_smoothing_hand_computed():
    # logits (0, ln 2, 0) -> p = (1/4, 1/2, 1/4). eps = 0.1, N = 3: q = 0.9 onehot + 1/30.
    # label 1: -(1/30 ln 1/4 + 28/30 ln 1/2 + 1/30 ln 1/4) = (4 + 28)/30 ln 2 = 32/30 ln 2
    # label 0: -(28/30 ln 1/4 + 1/30 ln 1/2 + 1/30 ln 1/4) = (56 + 1 + 2)/30 ln 2 = 59/30 ln 2
    logits = torch.tensor([[0.0, math.log(2), 0.0]] * 2)
    loss = CrossEntropyLabelSmooth(3, 0.1)(logits, torch.tensor([1, 0]))
    assert loss.item() == pytest.approx((32 + 59) / 60 * math.log(2), rel=1e-6)


def test_label_smoothing_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    torch.testing.assert_close(CrossEntropyLabelSmooth(4, 0.0)(logits, labels), F.cross_entropy(logits, labels))


def test_label_smoothing_errors():
    ce = CrossEntropyLabelSmooth(3)
    with pytest.raises(ValueError, match="num_classes=3"):
        ce(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        ce(torch.zeros(2, 3), torch.tensor([0, 3]))


# --- ranked list loss --------------------------------------------------------------------------------


def test_rll_hand_computed_uniform_weights():
    # Angles 0, 60, 30 degrees, labels (0, 0, 1); alpha = 1.2, m = 0.4 (positive boundary 0.8), T = 0.
    # d01 = 2 sin 30 = 1, d02 = d12 = 2 sin 15 = 0.5176.
    # anchor 0: L_P = 1 - 0.8 = 0.2; one active negative (0.5176 < 1.2): L_N = 1.2 - 0.5176
    # anchor 1: the same.  anchor 2: no positive; negatives both at 0.5176: L_N = 1.2 - 0.5176
    d = 2 * math.sin(math.radians(15))
    expected = (2 * 0.2 + 3 * (1.2 - d)) / 3
    loss = RankedListLoss(margin=0.4, alpha=1.2, tval=0)(_unit(0, 60, 30), torch.tensor([0, 0, 1]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_rll_hand_computed_weighted_negatives():
    # Angles 0, 10, 30, 50, 120 degrees, labels (0, 0, 1, 2, 3), alpha 1.2, m 0.4, T = 10.
    angles, labels = (0, 10, 30, 50, 120), [0, 0, 1, 2, 3]

    # Positives 0-1 at 2 sin 5 = 0.174 < 0.8: trivial, L_P = 0 for every anchor.
    # Active negatives (d < 1.2, i.e. angle gap < 73.7 degrees), per anchor:
    def l_n(anchor, negatives):
        d = [_chord(angles[anchor], angles[j]) for j in negatives]
        w = [math.exp(10 * (1.2 - x)) for x in d]
        return sum(wi * (1.2 - x) for wi, x in zip(w, d)) / sum(w)

    per_anchor = [
        l_n(0, [2, 3]),  # 30, 50 degrees away (120 is too far)
        l_n(1, [2, 3]),  # 20, 40
        l_n(2, [0, 1, 3]),  # 30, 20, 20 (120 is 90 away)
        l_n(3, [0, 1, 2, 4]),  # 50, 40, 20, 70
        l_n(4, [3]),  # 70 (others 90 or more away)
    ]
    expected = sum(per_anchor) / 5
    loss = RankedListLoss(margin=0.4, alpha=1.2, tval=10)(_unit(*angles), torch.tensor(labels))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # the harder negative gets the larger weight: the weighted mean is above the plain mean
    assert per_anchor[0] > ((1.2 - _chord(0, 30)) + (1.2 - _chord(0, 50))) / 2


def test_rll_positive_term_averages_over_non_trivial_positives():
    # Angles 0, 100, 20, labels all 0: d01 = 2 sin 50 = 1.532 (> 0.8), d02 = 0.347 (trivial),
    # d12 = 2 sin 40 = 1.286. anchor 0: (1.532 - 0.8) / 1; anchor 1: (1.532 - 0.8 + 1.286 - 0.8) / 2;
    # anchor 2: (1.286 - 0.8) / 1. No negatives.
    a, b = _chord(0, 100), _chord(100, 20)
    expected = ((a - 0.8) + ((a - 0.8) + (b - 0.8)) / 2 + (b - 0.8)) / 3
    loss = RankedListLoss()(_unit(0, 100, 20), torch.tensor([0, 0, 0]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_rll_is_scale_invariant_and_differentiable():
    torch.manual_seed(0)
    x, labels = torch.randn(6, 8, requires_grad=True), torch.tensor([0, 0, 1, 1, 2, 2])
    rll = RankedListLoss()
    loss = rll(x, labels)
    torch.testing.assert_close(rll(3 * x, labels), loss)
    torch.testing.assert_close(RankedListLoss(detach_weights=False)(x, labels), loss)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_rll_keeps_float64_and_upcasts_half_precision():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    x64 = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    loss = RankedListLoss(detach_weights=False)(x64, labels)
    assert loss.dtype == torch.float64
    loss.backward()
    assert x64.grad.dtype == torch.float64
    # Finite differences at float64 precision agree only if the loss is computed in float64 throughout.
    assert torch.autograd.gradcheck(
        lambda x: RankedListLoss(detach_weights=False)(x, labels), (x64.detach().requires_grad_(),)
    )
    for low in (torch.float16, torch.bfloat16):
        xl = x64.detach().to(low)
        value = RankedListLoss()(xl, labels)
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, RankedListLoss()(xl.float(), labels), rtol=0, atol=0)


def test_rll_zero_when_every_constraint_holds():
    # positives 10 degrees apart (d = 0.17 < 0.8), negatives 180 degrees apart (d = 2 > 1.2)
    loss = RankedListLoss()(_unit(0, 10, 180, 190), torch.tensor([0, 0, 1, 1]))
    assert loss.item() == 0.0


# --- Eq. 8 ---------------------------------------------------------------------------------------------


def _train_outputs(seed=0, branches=("global", "spatial")):
    torch.manual_seed(seed)
    return {
        b: {"features": torch.randn(6, 8, requires_grad=True), "logits": torch.randn(6, 4, requires_grad=True)}
        for b in branches
    }


def test_reid_loss_is_eq8():
    outputs, labels = _train_outputs(), torch.tensor([0, 0, 1, 1, 2, 3])
    total, parts = ReIDLoss(4)(outputs, labels)
    ce, rll = CrossEntropyLabelSmooth(4, 0.1), RankedListLoss(0.4, 1.2, 10)
    l_sc, l_sr = ce(outputs["spatial"]["logits"], labels), rll(outputs["spatial"]["features"], labels)
    l_gc, l_gr = ce(outputs["global"]["logits"], labels), rll(outputs["global"]["features"], labels)
    torch.testing.assert_close(total, l_sc + 0.5 * l_sr + 0.5 * l_gc + 1e-7 * l_gr)
    assert set(parts) == {"spatial_ce", "spatial_rll", "global_ce", "global_rll"}
    torch.testing.assert_close(parts["spatial_rll"], l_sr.detach())
    total.backward()
    assert outputs["spatial"]["features"].grad is not None


def test_reid_loss_drops_absent_terms():
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    outputs = _train_outputs(branches=("global",))
    total, parts = ReIDLoss(4)(outputs, labels)
    assert set(parts) == {"global_ce", "global_rll"}
    torch.testing.assert_close(total, 0.5 * parts["global_ce"] + 1e-7 * parts["global_rll"])
    outputs = _train_outputs(branches=("spatial",))
    total, parts = ReIDLoss(4, use_rll=False, alpha=0.3)(dict(outputs, theta=torch.zeros(6, 2, 3)), labels)
    assert set(parts) == {"spatial_ce"}
    torch.testing.assert_close(total.detach(), parts["spatial_ce"])


def test_reid_loss_rejects_eval_outputs():
    with pytest.raises(ValueError, match="train-mode"):
        ReIDLoss(4)({"global": torch.randn(6, 8)}, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="neither"):
        ReIDLoss(4)({"theta": torch.zeros(6, 2, 3)}, torch.zeros(6, dtype=torch.long))


def test_label_smoothing_keeps_float64():
    """float64 logits are not rounded to float32: the loss and its gradient stay float64 and pass gradcheck."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (5,), generator=gen)
    loss_fn = CrossEntropyLabelSmooth(7, 0.1)
    assert loss_fn(logits, labels).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda z: loss_fn(z, labels), (logits,))
