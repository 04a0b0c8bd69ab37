r"""Backbones: torchvision ResNets (and a tiny ResNet for CPU runs) cut before their pooling and fc.

Variants (Sec. 4.2), for an input of 384 x 128:
  "O"  the original ResNet with the last stride removed: layer4's stride is 1 -> output stride 16,
       feature map C x 24 x 8 (ResNet-50: 2048 x 24 x 8).
  "M"  layer3 and layer4 dilated instead of strided (dilation 2 and 4) -> output stride 8,
       C x 48 x 16. Neither variant adds parameters.
Each stride-2 stage maps a side n to ceil(n / 2) (conv1 7x7/2 pad 3, maxpool 3x3/2 pad 1, 3x3/2 pad 1
convs), so the map is ceil(in / output_stride) on each side; `feature_size` says it without running.

The backbone's parameter names are torchvision's (conv1, bn1, layer1..layer4), so a torchvision ResNet
state dict loads into it directly. `pretrained=` is one of
  None           random initialisation (train from scratch);
  "imagenet"     torchvision's IMAGENET1K_V1 weights (resnet50-0676ba61.pth for ResNet-50: the weights
                 ReID baselines start from), "imagenet-v2" its IMAGENET1K_V2 weights (ResNet-50 only),
                 both through torchvision's weights API, i.e. the torch.hub cache
                 ($TORCH_HOME/hub/checkpoints/), which downloads the file once when a network is there;
  a file path    a torchvision ResNet state-dict file.
"""

import http.client
import math
import os
import pickle
import urllib.parse

import torch
import torchvision
from torch import nn

RESNETS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}
BACKBONES = (*RESNETS, "tiny")
VARIANTS = ("O", "M")
# model.pretrained names -> the member of torchvision's weights enum they stand for.
IMAGENET_WEIGHTS = {"imagenet": "IMAGENET1K_V1", "imagenet-v2": "IMAGENET1K_V2"}
_WEIGHT_ENUMS = {
    "resnet18": torchvision.models.ResNet18_Weights,
    "resnet34": torchvision.models.ResNet34_Weights,
    "resnet50": torchvision.models.ResNet50_Weights,
}


class PretrainedWeightsError(FileNotFoundError):
    """ImageNet weights asked for by name are neither in the torch.hub cache nor downloadable;
    the message names the file and the folder to put it in."""


def _dilate_stage(stage, previous_dilation, dilation):
    """Turn a stride-2 ResNet stage into a stride-1 one with dilated 3x3 convs (DeepLab style).

    The 3x3 conv that used to stride keeps the previous dilation (it sees the map at the old sampling),
    every later 3x3 conv in the stage uses `dilation`; the 1x1 downsample shortcut loses its stride.
    padding = dilation keeps each 3x3 conv size-preserving.
    """
    for index, block in enumerate(stage):
        for conv in (m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)):
            d = previous_dilation if (index == 0 and conv.stride == (2, 2)) else dilation
            conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def _remove_last_stride(stage):
    block = stage[0]
    for conv in (m for m in block.modules() if isinstance(m, nn.Conv2d)):
        conv.stride = (1, 1)


class TinyBlock(nn.Module):
    """A ResNet basic block (two 3x3 convs + shortcut) with few channels."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class ResNetBackbone(nn.Module):
    """image (B, 3, H_in, W_in) -> feature map M (B, C, H, W); ResNet stem + layer1..layer4."""

    def __init__(self, name, stem, layers, out_channels, output_stride):
        super().__init__()
        self.name = name
        self.conv1, self.bn1, self.relu, self.maxpool = stem
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = out_channels
        self.output_stride = output_stride

    def feature_size(self, input_size):
        """(H, W) of M for an input of size (H_in, W_in)."""
        return tuple(math.ceil(side / self.output_stride) for side in input_size)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _tiny_parts(width=16):
    """Stem 3x3/2 + maxpool, then 4 stages of one basic block each: widths w, 2w, 4w, 8w (C = 128)."""
    stem = (
        nn.Conv2d(3, width, 3, 2, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    )
    widths = [width, 2 * width, 4 * width, 8 * width]
    layers, previous = [], width
    for index, channels in enumerate(widths):
        layers.append(nn.Sequential(TinyBlock(previous, channels, 1 if index == 0 else 2)))
        previous = channels
    return stem, layers, widths[-1]


def _apply_state_dict(backbone, state, source):
    """Load a torchvision ResNet state dict (fc.* ignored) into `backbone`; `source` names it in errors."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained: {source} does not hold a state dict (a mapping of names to tensors)")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:

        def some(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        details = []
        if missing:
            details.append(f"missing keys: {some(missing)}")
        if unexpected:
            details.append(f"unexpected keys: {some(unexpected)}")
        if mismatched:
            details.append(
                "shape mismatches: "
                + some([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched])
            )
        raise ValueError(
            f"pretrained: {source} does not match the {backbone.name} backbone ({'; '.join(details)}); "
            f"expected a torchvision {backbone.name} state dict"
        )
    backbone.load_state_dict(state, strict=True)
    return backbone


def _refused_by_weights_only(error):
    """True for torch.load's refusal of a pickle that needs more than tensors and plain containers (as opposed to
    a truncated or garbled file)."""
    return "weights only load failed" in str(error).lower()


def load_pretrained(backbone, path):
    """Load a torchvision ResNet state dict from the file `path` into `backbone` (fc.* ignored)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained: no such file {path!r} (expected a torchvision ResNet state-dict file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not _refused_by_weights_only(error):
            raise ValueError(f"pretrained: could not read {path!r} as a torch state-dict file: {error}") from error
        # torch's own message would suggest weights_only=False: never for a user's file.
        raise ValueError(
            f"pretrained: {path!r} is not a plain state dict (reading it would run code from the file); "
            "refused: expected a torchvision ResNet state-dict file"
        ) from None
    except Exception as error:  # a corrupt or non-torch file: say which file, keep the cause
        raise ValueError(f"pretrained: could not read {path!r} as a torch state-dict file: {error}") from error
    return _apply_state_dict(backbone, state, repr(path))


def imagenet_weights(name, which="imagenet"):
    """torchvision's weights enum member for backbone `name` and `which` (a key of IMAGENET_WEIGHTS)."""
    if which not in IMAGENET_WEIGHTS:
        raise ValueError(
            f"pretrained: unknown weights name {which!r}; expected one of "
            f"{', '.join(map(repr, IMAGENET_WEIGHTS))}, a state-dict file path, or None"
        )
    if name not in _WEIGHT_ENUMS:
        raise ValueError(
            f"pretrained={which!r}: the {name!r} backbone has no ImageNet weights (only "
            f"{', '.join(_WEIGHT_ENUMS)} do); train it from scratch "
            f"(pretrained None / model.pretrained: null)"
        )
    enum = _WEIGHT_ENUMS[name]
    member = IMAGENET_WEIGHTS[which]
    if member not in enum.__members__:
        offered = [w for w, m in IMAGENET_WEIGHTS.items() if m in enum.__members__]
        raise ValueError(
            f"pretrained={which!r}: torchvision has no {member} weights for {name}; "
            f"it offers {', '.join(map(repr, offered))}"
        )
    return enum[member]


def imagenet_cache_file(name, which="imagenet"):
    """Where torch.hub keeps (or would download) the weights file: $TORCH_HOME/hub/checkpoints/<file>."""
    url = imagenet_weights(name, which).url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urllib.parse.urlparse(url).path))


def load_imagenet(backbone, which="imagenet", progress=True):
    """Load torchvision's ImageNet weights `which` into `backbone` through its weights API (torch.hub cache).

    A missing file is downloaded once when a network is there; when that fails (offline machine,
    proxy, HTTP error) the error is one PretrainedWeightsError naming the file, its URL and the
    folder to put it in, not the network library's traceback.
    """
    weights = imagenet_weights(backbone.name, which)
    cached = imagenet_cache_file(backbone.name, which)
    was_cached = os.path.isfile(cached)
    try:
        # torch.hub unpickles by default; the weights file is a plain state dict, so read it as data only.
        state = weights.get_state_dict(progress=progress, map_location="cpu", weights_only=True)
    except (OSError, http.client.HTTPException) as error:
        if was_cached:
            raise ValueError(
                f"pretrained={which!r}: could not read the cached weights {cached} ({error}); "
                f"delete the file to fetch it again"
            ) from None
        reason = getattr(error, "reason", None) or error
        raise PretrainedWeightsError(
            f"pretrained={which!r}: the {backbone.name} ImageNet weights {os.path.basename(cached)} are not in "
            f"{os.path.dirname(cached)} and could not be downloaded ({reason}); put {weights.url} there "
            f"(the folder follows $TORCH_HOME), or give model.pretrained a file path, or null to train from scratch"
        ) from None
    except pickle.UnpicklingError as error:
        if not _refused_by_weights_only(error):
            raise ValueError(
                f"pretrained={which!r}: could not read the cached weights {cached} "
                f"({type(error).__name__}: {error}); delete the file to fetch it again"
            ) from None
        # A file that would run code when unpickled: never suggest trusting it.
        raise ValueError(
            f"pretrained={which!r}: the cached weights {cached} are not a plain state dict (reading "
            "them would run code from the file); refused: delete the file to fetch it again"
        ) from None
    except Exception as error:  # a truncated or garbled cached file: torch.load's various errors
        raise ValueError(
            f"pretrained={which!r}: could not read the cached weights {cached} "
            f"({type(error).__name__}: {error}); delete the file to fetch it again"
        ) from None
    return _apply_state_dict(backbone, state, f"{which!r} ({cached})")


def build_backbone(name="resnet50", variant="O", pretrained=None):
    """A ResNetBackbone: name in BACKBONES, variant "O" (output stride 16) or "M" (dilated, stride 8);
    `pretrained`: None, "imagenet", "imagenet-v2" or a state-dict file path (see the module docstring)."""
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(map(repr, BACKBONES))}, got {name!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be 'O' (last stride 1) or 'M' (layer3/4 dilated), got {variant!r}")
    if isinstance(pretrained, str) and pretrained in IMAGENET_WEIGHTS:
        imagenet_weights(name, pretrained)  # refuse tiny / a missing version before building anything
    if name == "tiny":
        stem, layers, channels = _tiny_parts()
    else:
        net = RESNETS[name](weights=None)
        stem = (net.conv1, net.bn1, net.relu, net.maxpool)
        layers = [net.layer1, net.layer2, net.layer3, net.layer4]
        channels = net.fc.in_features
    if variant == "O":
        _remove_last_stride(layers[3])
        output_stride = 16
    else:
        _dilate_stage(layers[2], 1, 2)
        _dilate_stage(layers[3], 2, 4)
        output_stride = 8
    backbone = ResNetBackbone(name, stem, layers, channels, output_stride)
    if isinstance(pretrained, str) and pretrained in IMAGENET_WEIGHTS:
        load_imagenet(backbone, pretrained)
    elif pretrained is not None:
        load_pretrained(backbone, pretrained)
    return backbone
