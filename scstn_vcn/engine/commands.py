"""The CLI's sub-commands; each takes the parsed argparse namespace (see scstn_vcn/cli.py)."""

import os
import time

import torch

from scstn_vcn.configs import load_config, model_identity
from scstn_vcn.engine import checkpoint as ckpt
from scstn_vcn.engine.errors import UsageError


def config_overrides(args, extra=()):
    """--set values then the dedicated flags (which win, being more specific)."""
    overrides = list(getattr(args, "overrides", []) or [])
    pairs = [
        ("data_root", ["data", "root"]), ("dataset", ["data", "name"]), ("seed", ["train", "seed"]),
        ("device", ["train", "device"]), ("amp", ["train", "amp"]), ("fused", ["train", "fused"]),
        ("kernels", ["train", "kernels"]), ("epochs", ["train", "epochs"]), ("batch_size", ["eval", "batch_size"]),
    ]
    for attr, parts in pairs:
        value = getattr(args, attr, None)
        if value is not None:
            overrides.append((parts, value))
    workers = getattr(args, "workers", None)
    if workers is not None:
        overrides += [(["data", "workers"], workers), (["eval", "workers"], workers)]
    return overrides + list(extra)


def train(args):
    from scstn_vcn.configs import list_presets
    from scstn_vcn.engine.evaluator import format_table, write_results
    from scstn_vcn.engine.trainer import Trainer

    if args.list_configs:
        print("\n".join(list_presets()))
        return 0
    extra = [(["train", "output"], args.output)] if args.output else []
    if args.resume and not args.config:
        # Continue the run as it was configured; flags and --set still override.
        state = ckpt.load_checkpoint(args.resume)
        config = _config_from_checkpoint(state, config_overrides(args, extra))
    else:
        config = load_config(args.config, config_overrides(args, extra))
    trainer = Trainer(config, resume=args.resume, progress=not args.no_progress)
    try:
        trainer.fit()
        if not args.no_eval and trainer.info.is_main:
            results, _, _ = trainer.evaluate()
            print(format_table(results))
            path = os.path.join(config["train"]["output"], "results.json")
            write_results(path, results, {"checkpoint": trainer.checkpoint_path})
            print(f"results written to {path}")
    finally:
        trainer.close()
    return 0


def _config_from_checkpoint(state, overrides):
    from scstn_vcn.configs import DEFAULTS, apply_overrides, merge, validate

    return validate(apply_overrides(merge(DEFAULTS, state["config"]), overrides))


def load_model_for_inference(args, need_data=True):
    """(config, model, dataset or None, device) for a --checkpoint, its weights loaded, eval mode."""
    from scstn_vcn.engine.builders import build_dataset_from_config, build_model_from_config
    from scstn_vcn.engine.runtime import choose_backend, resolve_device

    state = ckpt.load_checkpoint(args.checkpoint)
    if getattr(args, "config", None):
        config = load_config(args.config, config_overrides(args))
    else:
        config = _config_from_checkpoint(state, config_overrides(args))
    device = resolve_device(config["train"]["device"])
    if int(config["train"].get("threads") or 0) > 0:
        torch.set_num_threads(int(config["train"]["threads"]))
    backend = choose_backend(bool(config["train"]["fused"]), config["train"]["kernels"], device)
    print(f"model {config['model']['backbone']}-{config['model']['variant']} from {args.checkpoint}, "
          f"device {device}, ops backend {backend!r}")
    dataset = None
    num_classes = state["identity"]["num_classes"]
    if need_data:
        dataset = build_dataset_from_config(config)
    ckpt.check_identity(args.checkpoint, state, model_identity(config, num_classes))
    model = build_model_from_config(config, num_classes, pretrained=False)
    ckpt.load_model_weights(args.checkpoint, state, model)
    model.to(device).eval()
    return config, model, dataset, device


def evaluate(args):
    from scstn_vcn.engine.evaluator import evaluate_model, format_table, write_results

    config, model, dataset, device = load_model_for_inference(args)
    amp = config["train"]["amp"] if device.type == "cuda" else "off"
    start = time.perf_counter()
    results, query, gallery = evaluate_model(model, dataset, config, device, amp)
    print(f"{config['data']['name']}: {len(query['pids'])} queries, {len(gallery['pids'])} gallery images "
          f"({time.perf_counter() - start:.1f}s)")
    print(format_table(results))
    path = args.output or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "results.json")
    write_results(path, results, {"checkpoint": os.path.abspath(args.checkpoint), "dataset": config["data"]["name"],
                                  "data_root": config["data"]["root"]})
    print(f"results written to {path}")
    return 0


def make_synthetic(args):
    from scstn_vcn.data import make_synthetic as make

    root = make(args.root, num_identities=args.num_identities, seed=args.seed,
                images_per_identity=args.images_per_identity, gallery_per_identity=args.gallery_per_identity,
                query_per_identity=args.query_per_identity, num_cameras=args.num_cameras,
                num_distractors=args.num_distractors, num_junk=args.num_junk, height=args.height,
                width=args.width, overwrite=args.overwrite, verbose=True)
    print(f"synthetic data set in {root}")
    return 0


def export(args):
    from scstn_vcn import export as exporter

    if args.format == "onnx":
        config, model, _, device = load_model_for_inference(args, need_data=False)
        exporter.export_onnx(model.cpu(), config, args.output, opset=args.opset)
    else:
        config, model, dataset, device = load_model_for_inference(args)
        exporter.export_features(model, dataset, config, device, args.output)
    print(f"exported {args.format} to {args.output}")
    return 0


def visualize(args):
    from scstn_vcn import visualize as vis

    wanted = [w.strip() for w in args.what.split(",") if w.strip()]
    unknown = set(wanted) - set(vis.FIGURES)
    if unknown:
        raise UsageError(f"--what: unknown figure(s) {', '.join(sorted(unknown))}; expected {', '.join(vis.FIGURES)}")
    written = []
    if "curves" in wanted:
        log = args.log or (os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "log.csv") if args.checkpoint else None)
        if log is None:
            raise UsageError("--what curves needs --log CSV or a --checkpoint with log.csv beside it")
        written.append(vis.plot_training_curves(log, os.path.join(args.output, "training_curves.png")))
    model_figures = [w for w in wanted if w != "curves"]
    if model_figures:
        if not args.checkpoint:
            raise UsageError(f"--what {','.join(model_figures)} needs --checkpoint")
        config, model, dataset, device = load_model_for_inference(args)
        written += vis.draw_model_figures(model, dataset, config, device, args.output, model_figures,
                                          num_queries=args.num_queries, topk=args.topk)
    for path in written:
        print(f"wrote {path}")
    return 0


def demo(args):
    from scstn_vcn.engine.demo import run_demo

    return run_demo(args)
