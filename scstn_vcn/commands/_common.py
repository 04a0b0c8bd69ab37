"""What several sub-commands share: their argument groups, the config a command runs with, a model loaded
from --checkpoint (a training checkpoint or a .safetensors model file) for inference, a FeatureExtractor from
the inference flags, and atomic .npz output."""

import torch

from scstn_vcn.configs import config_from_model, load_config
from scstn_vcn.engine.checkpoint import atomic_write
from scstn_vcn.engine.errors import UsageError

# ------------------------------------------------------------------------------ argument groups


def add_config_args(parser, config_default=None):
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--config", default=config_default, help="a preset name (see `scstn-vcn train --list-configs`) or a YAML file"
    )
    group.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    group.add_argument(
        "--data-root", help="the data set folder, or a manifest's CSV file (data.root); several: A,B with --dataset a,b"
    )
    group.add_argument(
        "--dataset",
        help="market1501 | dukemtmcreid | msmt17 | synthetic | manifest | folders (data.name); several: a,b",
    )
    group.add_argument("--seed", type=int, help="random seed (train.seed)")
    group.add_argument("--workers", type=int, help="data loader worker processes (data.workers, eval.workers)")


def add_traceback_arg(parser):
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")


def add_runtime_args(parser):
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", help="auto | cpu | cuda | cuda:N (train.device)")
    group.add_argument("--amp", choices=("bf16", "fp16", "off"), help="autocast dtype on CUDA (train.amp)")
    group.add_argument(
        "--fused",
        action="store_true",
        default=None,
        help="run every op with its fused backend (triton on CUDA, native on the CPU)",
    )
    group.add_argument("--kernels", choices=("triton", "native"), help="with --fused: which fused backend")
    add_traceback_arg(group)


def add_inference_args(parser, checkpoint_required=True):
    """A trained model applied to image files (extract, search): no data set, no config. A command that can
    also work from features alone (search --index --query-features) checks --checkpoint itself."""
    parser.add_argument(
        "--checkpoint",
        required=checkpoint_required,
        metavar="PATH",
        help="a checkpoint written by train or demo, or a .safetensors model file written by export",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    add_runtime_args(parser)


# ------------------------------------------------------------------------------ configuration


def config_overrides(args, extra=()):
    """--set values then the dedicated flags (which win, being more specific)."""
    overrides = list(getattr(args, "overrides", []) or [])
    pairs = [
        ("data_root", ["data", "root"]),
        ("dataset", ["data", "name"]),
        ("seed", ["train", "seed"]),
        ("device", ["train", "device"]),
        ("amp", ["train", "amp"]),
        ("fused", ["train", "fused"]),
        ("kernels", ["train", "kernels"]),
        ("epochs", ["train", "epochs"]),
        ("batch_size", ["eval", "batch_size"]),
    ]
    for attr, parts in pairs:
        value = getattr(args, attr, None)
        if value is not None:
            overrides.append((parts, value))
    workers = getattr(args, "workers", None)
    if workers is not None:
        overrides += [(["data", "workers"], workers), (["eval", "workers"], workers)]
    return overrides + list(extra)


def inference_config_and_model(args):
    """(model source, config, model on the CPU in eval mode) for --checkpoint: a training checkpoint or a
    safetensors model file, read as data only and checked against the config (the file's model settings, or
    --config). How the run runs (threads, workers, device, folders, evaluation settings) comes from the flags
    and the defaults, never from the file."""
    from scstn_vcn.engine import model_file

    source = model_file.open_model_source(args.checkpoint)
    if getattr(args, "config", None):
        config = load_config(args.config, config_overrides(args))
    else:
        config = config_from_model(source.config, config_overrides(args), source=f"{source.kind} {source.path}")
    return source, config, model_file.build_inference_model(source, config)


def load_model_for_inference(args, need_data=True, with_source=False):
    """(config, model, dataset or None, device) for a --checkpoint (a training checkpoint or a .safetensors
    model file), its weights loaded, eval mode; `with_source` adds the model_file.ModelSource (what the
    file says about itself: its own configuration, its identity)."""
    from scstn_vcn.engine.builders import build_dataset_from_config
    from scstn_vcn.engine.runtime import choose_backend, resolve_device

    source, config, model = inference_config_and_model(args)
    device = resolve_device(config["train"]["device"])
    if int(config["train"].get("threads") or 0) > 0:
        torch.set_num_threads(int(config["train"]["threads"]))
    backend = choose_backend(bool(config["train"]["fused"]), config["train"]["kernels"], device)
    print(
        f"model {config['model']['backbone']}-{config['model']['variant']} from {source.kind} {args.checkpoint}, "
        f"device {device}, ops backend {backend!r}"
    )
    dataset = build_dataset_from_config(config) if need_data else None
    model.to(device).eval()
    return (config, model, dataset, device, source) if with_source else (config, model, dataset, device)


# ------------------------------------------------------------------------------ image files


def feature_extractor(args):
    """A FeatureExtractor for --checkpoint with the command's --device / --amp / --fused / --kernels."""
    from scstn_vcn.engine.runtime import resolve_device
    from scstn_vcn.extractor import FeatureExtractor

    device = resolve_device(args.device or "auto")
    if args.kernels is not None and not args.fused:
        raise UsageError(f"--kernels {args.kernels} only applies with --fused (the default runs the eager ops)")
    backend = (args.kernels or ("triton" if device.type == "cuda" else "native")) if args.fused else "eager"
    extractor = FeatureExtractor(
        args.checkpoint, device=str(device), backend=backend, batch_size=args.batch_size, amp=args.amp or "off"
    )
    print(extractor)
    return extractor


def progress(total, desc, disable):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=disable, dynamic_ncols=True, leave=False)


def write_npz_atomically(path, arrays):
    """np.savez into a temporary file beside `path`, then rename: `path` is never half-written."""
    import numpy as np

    # a file object: savez adds no ".npz" to the name
    atomic_write(path, lambda handle: np.savez(handle, **arrays))
