"""Model, loss and data built from a configuration (the other packages' public APIs)."""

import os
from typing import NamedTuple


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


class EvalTarget(NamedTuple):
    """A data set evaluated after training or by `eval`: its name and root, the data set read from them,
    and whether the model was trained on its training split (the same images, in any layout; the query
    and gallery never are): True, False, or None when the model's record cannot tell (see _trained_on)."""

    name: str
    root: str
    dataset: object
    trained_on: bool | None

    @property
    def label(self):
        return f"{self.name} at {self.root}"


def _reader_kwargs(config, name):
    """data.kwargs for the data set `name`: the entries meant for every reader, and those under the
    data set's own name ({msmt17: {combine_trainval: true}}), which only it gets."""
    from scstn_vcn.data import DATASETS, dataset_key

    kwargs = config["data"].get("kwargs") or {}
    own, common = {}, {}
    for key, value in kwargs.items():
        norm = str(key).lower().replace("-", "").replace("_", "")
        if norm in DATASETS and isinstance(value, dict):
            if norm == dataset_key(name):
                own.update(value)
        else:
            common[key] = value
    return {**common, **own}


def read_dataset(config, name, root, say=print):
    """Data set `name` from `root`, its query identities checked against its gallery (data.strict_queries:
    an error; otherwise a note through `say`). Errors name the data set and the root."""
    from scstn_vcn.data import build_dataset

    if not root:
        raise ValueError(f"data.root is not set: pass --data-root with the {name} data set (a folder or a manifest)")
    if not os.path.exists(root):
        raise FileNotFoundError(f"--data-root {root}: no such file or folder (expected the {name} data set)")
    kwargs = _reader_kwargs(config, name)
    try:
        dataset = build_dataset(name, root, **kwargs)
    except TypeError as error:
        if kwargs and "argument" in str(error):
            raise ValueError(f"data.kwargs {kwargs} do not apply to the {name} data set ({error})") from None
        raise
    if dataset.query and dataset.gallery:
        note = dataset.check_queries(strict=bool(config["data"].get("strict_queries")))
        if note:
            say(f"note: {note}")
    return dataset


def build_datasets_from_config(config, say=print):
    """[(name, root, data set)] of data.name / data.root, in order; the same data set twice is refused (its
    identities would be two classes each)."""
    from scstn_vcn.configs import data_sets

    specs = data_sets(config)
    unset = [name for name, root in specs if not root]
    if unset:
        raise ValueError(
            f"data.root is not set: pass --data-root with the {', '.join(unset)} data set(s) (a folder or a manifest)"
        )
    seen = set()
    for name, root in specs:
        if _same_data(name, root) in seen:
            raise ValueError(f"data.name / data.root: {name} at {root} is listed twice")
        seen.add(_same_data(name, root))
    return [(name, root, read_dataset(config, name, root, say)) for name, root in specs]


def build_dataset_from_config(config, say=print):
    """The one data set of `config` (commands that work on one: visualize, export); with several, a
    ValueError asking for --dataset / --data-root. Training reads them with build_datasets_from_config."""
    datasets = build_datasets_from_config(config, say)
    if len(datasets) > 1:
        names = ", ".join(name for name, _, _ in datasets)
        raise ValueError(
            f"data.name lists {len(datasets)} data sets ({names}); this command works on one: "
            "pass --dataset NAME --data-root ROOT"
        )
    return datasets[0][2]


def _same_data(name, root):
    return (name.lower().replace("-", "").replace("_", ""), os.path.realpath(root) if root else None)


def training_record(name, dataset):
    """What a model records about a data set it was trained on: its name, size and training split's
    fingerprint (ReIDDataset.train_fingerprint), no path."""
    return {
        "dataset": name,
        "identities": dataset.num_train_pids,
        "images": dataset.num_train_imgs,
        "train_sha256": dataset.train_fingerprint(),
    }


def _trained_on(name, dataset, records):
    """True when the target's training split is one the model was trained on (same fingerprint), None when a
    record without a fingerprint has its name (a model file written before they were recorded), else False."""
    fingerprint = dataset.train_fingerprint()
    if fingerprint and any(r.get("train_sha256") == fingerprint for r in records):
        return True
    key = _same_data(name, None)[0]
    unknown = [r for r in records if not r.get("train_sha256") and _same_data(str(r.get("dataset")), None)[0] == key]
    return None if unknown else False


def build_eval_targets(config, datasets=None, say=print, trained_on=None):
    """[EvalTarget]: each data set of data.name / data.root (`datasets`, [(name, root, data set)], when
    already read), then the eval.targets not among them. `trained_on` are the training_record()s of the
    sets the model was trained on (its identity's "trained_on"); by default (after training) those of
    data.name / data.root themselves, where a training set without a query/gallery split is skipped with
    a note. A target without them is an error. The list may be empty (training on sets without
    query/gallery and no eval.targets)."""
    from scstn_vcn.configs import eval_targets

    after_training = trained_on is None
    datasets = build_datasets_from_config(config, say) if datasets is None else datasets
    if after_training:
        trained_on = [training_record(name, dataset) for name, _, dataset in datasets]
    records = [r for r in trained_on if isinstance(r, dict)]  # a file's record is data, checked as such
    listed = set()
    targets = []
    for name, root, dataset in datasets:
        listed.add(_same_data(name, root))
        if after_training and not (dataset.query and dataset.gallery):
            say(f"note: {name} at {root} has no query/gallery split; it is trained on, not evaluated")
            continue
        dataset.require(["query", "gallery"], f"evaluating on {name} at {root}")
        targets.append(EvalTarget(name, str(root), dataset, _trained_on(name, dataset, records)))
    for name, root in eval_targets(config):
        if _same_data(name, root) in listed:
            continue
        listed.add(_same_data(name, root))
        dataset = read_dataset(config, name, root, say)
        dataset.require(["query", "gallery"], f"evaluating on it (eval.targets: {name}:{root})")
        targets.append(EvalTarget(name, root, dataset, _trained_on(name, dataset, records)))
    return targets
