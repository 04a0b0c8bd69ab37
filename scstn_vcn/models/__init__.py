"""Backbones, the full model (build_model) and the Table 3 variants (ABLATIONS)."""

from scstn_vcn.models.ablations import ABLATIONS, Ablation
from scstn_vcn.models.backbones import (
    BACKBONES,
    IMAGENET_WEIGHTS,
    VARIANTS,
    PretrainedWeightsError,
    ResNetBackbone,
    build_backbone,
    imagenet_cache_file,
    load_imagenet,
    load_pretrained,
)
from scstn_vcn.models.reid_model import HEADS, STN_KINDS, ReIDModel, build_head, build_model, build_stn

__all__ = [
    "ABLATIONS",
    "Ablation",
    "BACKBONES",
    "HEADS",
    "IMAGENET_WEIGHTS",
    "PretrainedWeightsError",
    "ReIDModel",
    "ResNetBackbone",
    "STN_KINDS",
    "VARIANTS",
    "build_backbone",
    "build_head",
    "build_model",
    "build_stn",
    "imagenet_cache_file",
    "load_imagenet",
    "load_pretrained",
]
