"""Backbones, the full model (build_model) and the Table 3 variants (ABLATIONS)."""

from scstn_vcn.models.ablations import ABLATIONS, Ablation
from scstn_vcn.models.backbones import BACKBONES, VARIANTS, ResNetBackbone, build_backbone, load_pretrained
from scstn_vcn.models.reid_model import HEADS, STN_KINDS, ReIDModel, build_head, build_model, build_stn

__all__ = [
    "ABLATIONS",
    "Ablation",
    "BACKBONES",
    "HEADS",
    "ReIDModel",
    "ResNetBackbone",
    "STN_KINDS",
    "VARIANTS",
    "build_backbone",
    "build_head",
    "build_model",
    "build_stn",
    "load_pretrained",
]
