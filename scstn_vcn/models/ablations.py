r"""The rows of Table 3 as build_model / ReIDLoss settings.

ABLATIONS[name] is an Ablation(row, model, loss): `row` is the paper's label, `model` the keyword
arguments for build_model (on top of num_classes, backbone, variant, ...), `loss` those for ReIDLoss.
Only "no_rll" changes the loss (L_sr and L_gr dropped); every other row changes the model only.

    ab = ABLATIONS["no_rll"]
    model = build_model(num_classes, backbone="resnet50", **ab.model)
    criterion = ReIDLoss(num_classes, **ab.loss)

The meaning of each row (Sec. 4.4): "Baseline" is the global branch alone; "Baseline+VCN" has no
transformer (VCN pools M itself); "STN" learns the 6 affine factors freely, "STN (w/o rotate)" the 4
of scale and translation; "SC-STN (eps in (0,1))" drops the 0.4 prior, "SC-STN (eps = 0.4)" fixes eps;
GP / FC / MGN replace VCN on the refined map; "w/o HP" runs VCN's kernels over the whole (C, H, W)
map; "shared" uses one set of K kernels for all channels. Every row with SC-STN or the STN without
rotation resamples with affine_hpool's separable path (theta has no rotation by construction); only
"plain_stn" (6 free factors) uses the general one.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Ablation:
    row: str
    model: dict = field(default_factory=dict)
    loss: dict = field(default_factory=dict)


ABLATIONS = {
    "baseline": Ablation("f^g w/o f^s (Baseline)", {"spatial_branch": False}),
    "spatial_only": Ablation("f^s w/o f^g", {"global_branch": False}),
    "vcn_no_stn": Ablation("Baseline+VCN", {"stn": None}),
    "plain_stn": Ablation("Baseline+STN+VCN", {"stn": "stn"}),
    "stn_no_rotation": Ablation("Baseline+STN(w/o rotate)+VCN", {"stn": "stn_no_rotation"}),
    "scstn_eps1": Ablation("Baseline+SC-STN(eps in (0,1))+VCN", {"eps_max": 1.0}),
    "scstn_eps_fixed": Ablation("Baseline+SC-STN(eps = 0.4)+VCN", {"learn_eps": False}),
    "gp_head": Ablation("Baseline+SC-STN+GP", {"head": "gp"}),
    "fc_head": Ablation("Baseline+SC-STN+FC", {"head": "fc"}),
    "vcn_no_hpool": Ablation("Baseline+SC-STN+VCN (w/o HP)", {"head": "vcn_no_hpool"}),
    "vcn_shared": Ablation("Baseline+SC-STN+VCN (shared)", {"head": "vcn_shared"}),
    "mgn_stripes": Ablation("Baseline+SC-STN+MGN", {"head": "mgn"}),
    "no_rll": Ablation("Full Model (Baseline+SC-STN+VCN) w/o L_r", {}, {"use_rll": False}),
    "full": Ablation("Full Model (Baseline+SC-STN+VCN)"),
}
