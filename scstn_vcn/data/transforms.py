"""Image transforms (torchvision.transforms.v2) of the paper's recipe (4.2).

Training: resize, random horizontal flip, pad + random crop back to size, then normalise and
random erasing (erasing works on the normalised tensor, as in Zhong et al.: the erased patch gets
random values). Evaluation: resize and normalise only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(
    height: int,
    width: int,
    is_train: bool,
    flip_p: float = 0.5,
    pad: int = 10,
    erasing_p: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """A PIL image -> normalised float tensor (3, height, width) pipeline."""
    steps = [v2.ToImage(), v2.Resize((height, width), antialias=True)]
    if is_train:
        if flip_p > 0:
            steps.append(v2.RandomHorizontalFlip(p=flip_p))
        if pad > 0:
            steps += [v2.Pad(pad), v2.RandomCrop((height, width))]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    if is_train and erasing_p > 0:
        steps.append(v2.RandomErasing(p=erasing_p, value="random"))
    return v2.Compose(steps)
