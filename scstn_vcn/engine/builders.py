"""Model, loss and data built from a configuration (the other packages' public APIs)."""

import os


def ablation_kwargs(config):
    """build_model keyword arguments: the named Table 3 ablation, then model.kwargs on top."""
    from scstn_vcn.models import ABLATIONS

    kwargs = {}
    name = config["model"].get("ablation")
    if name not in (None, "full"):
        if name not in ABLATIONS:
            raise ValueError(f"model.ablation: unknown ablation {name!r}; expected one of {', '.join(sorted(ABLATIONS))}")
        kwargs.update(ABLATIONS[name])
    elif name == "full" and "full" in ABLATIONS:
        kwargs.update(ABLATIONS["full"])
    kwargs.update(config["model"].get("kwargs") or {})
    return kwargs


def build_model_from_config(config, num_classes, pretrained=True):
    """The model of `config` with `num_classes` identities. `pretrained=False` skips the ImageNet
    weights (loading a checkpoint replaces them anyway)."""
    from scstn_vcn.models import build_model

    weights = config["model"].get("pretrained") if pretrained else None
    if weights is not None and not os.path.isfile(weights):
        raise FileNotFoundError(f"model.pretrained: no such file {weights} (expected ImageNet backbone weights, a .pth file)")
    return build_model(
        num_classes,
        backbone=config["model"]["backbone"],
        variant=config["model"]["variant"],
        pretrained=weights,
        **ablation_kwargs(config),
    )


def build_loss_from_config(config, num_classes):
    from scstn_vcn.losses import ReIDLoss

    loss = config["loss"]
    return ReIDLoss(
        num_classes,
        alpha=float(loss["alpha"]),
        beta=float(loss["beta"]),
        gamma=float(loss["gamma"]),
        use_rll=bool(loss["use_rll"]),
        **(loss.get("kwargs") or {}),
    )


def build_dataset_from_config(config):
    from scstn_vcn.data import build_dataset

    root = config["data"].get("root")
    if not root:
        raise ValueError(f"data.root is not set: pass --data-root with the {config['data']['name']} folder")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--data-root {root}: no such folder (expected the {config['data']['name']} data set)")
    return build_dataset(config["data"]["name"], root)
