"""Model, loss and data built from a configuration (the other packages' public APIs)."""

import os


def _ablation(config):
    """The named Table 3 row (scstn_vcn.models.ABLATIONS) or None for the full model."""
    from scstn_vcn.models import ABLATIONS

    name = config["model"].get("ablation")
    if name is None:
        return None
    if name not in ABLATIONS:
        raise ValueError(f"model.ablation: unknown ablation {name!r}; expected one of {', '.join(sorted(ABLATIONS))}")
    return ABLATIONS[name]


def ablation_kwargs(config):
    """build_model keyword arguments: the ablation's model settings, then model.kwargs on top."""
    ablation = _ablation(config)
    kwargs = dict(ablation.model) if ablation is not None else {}
    kwargs.update(config["model"].get("kwargs") or {})
    return kwargs


def build_model_from_config(config, num_classes, pretrained=True):
    """The model of `config` with `num_classes` identities. `pretrained=False` skips the ImageNet
    weights (loading a checkpoint replaces them anyway)."""
    from scstn_vcn.models import IMAGENET_WEIGHTS, build_model

    weights = config["model"].get("pretrained") if pretrained else None
    if weights is not None and weights not in IMAGENET_WEIGHTS and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"model.pretrained: no such file {weights} (expected ImageNet backbone weights: "
            f"{' or '.join(IMAGENET_WEIGHTS)} from the torch.hub cache, or a .pth file)"
        )
    return build_model(
        num_classes,
        backbone=config["model"]["backbone"],
        variant=config["model"]["variant"],
        pretrained=weights,
        # SC-STN's FC1 and VCN's kernels are sized by the feature map, hence by the input size.
        input_size=(int(config["data"]["height"]), int(config["data"]["width"])),
        **ablation_kwargs(config),
    )


def build_loss_from_config(config, num_classes):
    from scstn_vcn.losses import ReIDLoss

    loss = config["loss"]
    ablation = _ablation(config)
    kwargs = dict(ablation.loss) if ablation is not None else {}
    kwargs.update(loss.get("kwargs") or {})
    # The config's use_rll is overridden by an ablation that switches L_r off ("no_rll").
    use_rll = kwargs.pop("use_rll", bool(loss["use_rll"]))
    return ReIDLoss(
        num_classes,
        alpha=float(loss["alpha"]),
        beta=float(loss["beta"]),
        gamma=float(loss["gamma"]),
        use_rll=use_rll,
        **kwargs,
    )


def build_dataset_from_config(config):
    from scstn_vcn.data import build_dataset

    root = config["data"].get("root")
    if not root:
        raise ValueError(f"data.root is not set: pass --data-root with the {config['data']['name']} folder")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--data-root {root}: no such folder (expected the {config['data']['name']} data set)")
    return build_dataset(config["data"]["name"], root, **(config["data"].get("kwargs") or {}))
