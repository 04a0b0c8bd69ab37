r"""The SC-STN + VCN re-identification model (Fig. 2) and build_model, which also expresses Table 3.

    M              = backbone(I)                                  (B, C, H, W)
    cmean, gpool   = ops.channel_pool(M)                          computed ONCE for both branches
    global branch  : f^g = BN(gpool);            logits_g = FC(f^g)
    spatial branch : theta = SC-STN(cmean);      f = head(M, theta)  (VCN: affine_hpool + vertical_proj)
                     f^s = BN(f);                logits_s = FC(f^s)

Outputs of forward(images, return_theta=False):
  eval mode   {"global": f^g (B, C), "spatial": f^s (B, D)}            (D = C K for VCN), after the BN
  train mode  {"global": {"features": f^g, "logits": (B, N_id)}, "spatial": {"features": f^s, "logits": ...}}
  Only the branches present appear. return_theta=True adds "theta": (B, 2, 3) (identity when the
  model has no STN but a spatial branch; absent without a spatial branch).
The ops run with backend=None, so scstn_vcn.ops.set_backend("native"/"triton") switches the whole model.
A transformer whose theta has no rotation or shear by construction (SC-STN and its variants, the STN
without rotation: its `rotation_free` flag) makes the head resample with the separable path
(ops.affine_hpool(..., rotation_free=True)); the free 6-factor STN keeps the general one.
"""

from torch import nn

from scstn_vcn import ops
from scstn_vcn.models.backbones import build_backbone
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
)

STN_KINDS = ("scstn", "stn", "stn_no_rotation", None)
HEADS = ("vcn", "vcn_shared", "vcn_no_hpool", "gp", "fc", "mgn")


def build_stn(kind, height, width, eps_max=0.4, learn_eps=True):
    """The transformer for stn=kind: "scstn" (Eq. 3-5), "stn" (6 free factors), "stn_no_rotation", None."""
    if kind == "scstn":
        return SCSTN(height, width, eps_max=eps_max, learn_eps=learn_eps)
    if kind == "stn":
        return STN(height, width, rotation=True)
    if kind == "stn_no_rotation":
        return STN(height, width, rotation=False)
    if kind is None:
        return None
    raise ValueError(f"stn must be one of {', '.join(map(repr, STN_KINDS))}, got {kind!r}")


def build_head(kind, channels, height, width, num_kernels=6, delta_init="random"):
    """The spatial feature extractor for head=kind (see HEADS); returns a module with .out_features."""
    if kind == "vcn":
        return VCN(channels, height, num_kernels, delta_init)
    if kind == "vcn_shared":
        return SharedVCN(channels, height, num_kernels, delta_init)
    if kind == "vcn_no_hpool":
        return VCNNoHPool(channels, height, width, num_kernels, delta_init)
    if kind == "gp":
        return GPHead(channels)
    if kind == "fc":
        return FCHead(channels, channels * num_kernels)
    if kind == "mgn":
        return MGNStripeHead(channels, height)
    raise ValueError(f"head must be one of {', '.join(map(repr, HEADS))}, got {kind!r}")


class ReIDModel(nn.Module):
    """Backbone + optional global branch + optional spatial branch (transformer + head + BNNeck)."""

    def __init__(self, backbone, input_size, global_branch, stn, head, num_classes):
        super().__init__()
        self.backbone = backbone
        self.input_size = tuple(input_size)
        self.feature_size = backbone.feature_size(self.input_size)
        self.global_branch = global_branch  # GlobalBranch or None
        self.stn = stn  # SCSTN / STN or None
        self.head = head  # VCN / ... or None (no spatial branch)
        self.spatial_neck = BNNeck(head.out_features, num_classes) if head is not None else None
        if global_branch is None and head is None:
            raise ValueError("the model needs a global branch, a spatial branch, or both; got neither")

    @property
    def feature_dims(self):
        """{"global": C, "spatial": D} for the branches present."""
        dims = {}
        if self.global_branch is not None:
            dims["global"] = self.global_branch.out_features
        if self.head is not None:
            dims["spatial"] = self.head.out_features
        return dims

    def classifier_parameters(self):
        """The ID classifiers' parameters (used only in training)."""
        necks = [self.global_branch.neck if self.global_branch is not None else None, self.spatial_neck]
        return [
            p
            for neck in necks
            if neck is not None and neck.classifier is not None
            for p in neck.classifier.parameters()
        ]

    def num_parameters(self, include_classifiers=False):
        """Parameter count (all parameters, trainable or frozen), without the ID classifiers by default:
        the model as deployed (Table 4)."""
        total = sum(p.numel() for p in self.parameters())
        if not include_classifiers:
            total -= sum(p.numel() for p in self.classifier_parameters())
        return total

    def forward(self, images, return_theta=False):
        M = self.backbone(images)
        if tuple(M.shape[2:]) != self.feature_size:
            raise ValueError(
                f"images of size {tuple(images.shape[2:])} give a {tuple(M.shape[2:])} feature map, but the model "
                f"was built for input_size={self.input_size} ({self.feature_size}); rebuild with that input_size"
            )
        needs_cmean = self.stn is not None
        cmean = gpool = None
        if self.global_branch is not None or needs_cmean:
            cmean, gpool = ops.channel_pool(M)
        out, theta = {}, None
        if self.global_branch is not None:
            out["global"] = self._branch_output(*self.global_branch(gpool))
        if self.head is not None:
            rotation_free = False
            if self.stn is not None:
                theta = self.stn(cmean)
                rotation_free = self.stn.rotation_free  # from the module's configuration, never theta's values
            out["spatial"] = self._branch_output(*self.spatial_neck(self.head(M, theta, rotation_free=rotation_free)))
            if return_theta:
                out["theta"] = theta if theta is not None else _identity_theta(M)
        return out

    def _branch_output(self, features, logits):
        if self.training:
            if logits is None:
                raise RuntimeError("train-mode forward needs the classifiers: build the model with num_classes")
            return {"features": features, "logits": logits}
        return features


def _identity_theta(M):
    theta = M.new_zeros(M.shape[0], 2, 3)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    return theta


def build_model(
    num_classes,
    backbone="resnet50",
    variant="O",
    pretrained=None,
    input_size=(384, 128),
    global_branch=True,
    spatial_branch=True,
    stn="scstn",
    eps_max=0.4,
    learn_eps=True,
    head="vcn",
    num_kernels=6,
    delta_init="random",
):
    """Build the model of Fig. 2, or a Table 3 variant of it (see models.ablations.ABLATIONS).

    num_classes   training identities N_id (the classifiers' outputs); None builds no classifiers
                  (an eval-only feature extractor).
    backbone      "resnet50" (paper), "resnet34", "resnet18", or "tiny" (~0.3 M params, for CPU runs).
    variant       "O": last stride 1 (24 x 8 at 384 x 128); "M": layer3/4 dilated (48 x 16).
    pretrained    backbone weights: "imagenet" (torchvision's V1 ImageNet weights, through the torch.hub
                  cache), "imagenet-v2", the path of a torchvision ResNet state-dict file (fc.* ignored),
                  or None (from scratch).
    input_size    (H_in, W_in) of the images; fixes the map size H x W that SC-STN's FC1 (H W inputs)
                  and VCN's kernels (H taps) are built for.
    global_branch / spatial_branch   which branches exist ("Baseline" = global only).
    stn           "scstn" | "stn" (6 free factors) | "stn_no_rotation" | None (VCN on M directly).
    eps_max, learn_eps   SC-STN's bound: (0.4, True) paper; (1.0, True) eps in (0, 1); (0.4, False) eps = 0.4.
    head          "vcn" | "vcn_shared" | "vcn_no_hpool" | "gp" | "fc" (C K outputs) | "mgn" (2+3 stripes).
    num_kernels   K, VCN kernels per channel (6); also sets the FC head's C K outputs.
    delta_init    "random" (N(0, 1/H)) or "stripes"; see modules.vcn.
    """
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(
            f"num_classes must be a positive int (the number of training identities) or None, got {num_classes!r}"
        )
    if len(tuple(input_size)) != 2 or min(input_size) < 1:
        raise ValueError(f"input_size must be (height, width) of the images, got {input_size!r}")
    if num_kernels < 1:
        raise ValueError(f"num_kernels must be >= 1, got {num_kernels}")
    net = build_backbone(backbone, variant, pretrained)
    channels = net.out_channels
    height, width = net.feature_size(input_size)
    glob = GlobalBranch(channels, num_classes) if global_branch else None
    transformer = head_module = None
    if spatial_branch:
        transformer = build_stn(stn, height, width, eps_max, learn_eps)
        head_module = build_head(head, channels, height, width, num_kernels, delta_init)
    return ReIDModel(net, input_size, glob, transformer, head_module, num_classes)
