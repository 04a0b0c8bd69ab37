"""The CLI's sub-commands; each takes the parsed argparse namespace (see scstn_vcn/cli.py).

`scstn-vcn demo` lives in engine/demo.py, which builds on this module (never the other way round)."""

import os
import time

import torch

from scstn_vcn.configs import config_from_saved, load_config, model_identity
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
        config = config_from_saved(state["config"], config_overrides(args, extra))
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


def load_model_for_inference(args, need_data=True):
    """(config, model, dataset or None, device) for a --checkpoint, its weights loaded, eval mode."""
    from scstn_vcn.engine.builders import build_dataset_from_config, build_model_from_config
    from scstn_vcn.engine.runtime import choose_backend, resolve_device

    state = ckpt.load_checkpoint(args.checkpoint)
    if getattr(args, "config", None):
        config = load_config(args.config, config_overrides(args))
    else:
        config = config_from_saved(state["config"], config_overrides(args))
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


def _feature_extractor(args):
    """A FeatureExtractor for --checkpoint with the command's --device / --amp / --fused / --kernels."""
    from scstn_vcn.engine.runtime import resolve_device
    from scstn_vcn.extractor import FeatureExtractor

    device = resolve_device(args.device or "auto")
    if args.kernels is not None and not args.fused:
        raise UsageError(f"--kernels {args.kernels} only applies with --fused (the default runs the eager ops)")
    backend = (args.kernels or ("triton" if device.type == "cuda" else "native")) if args.fused else "eager"
    extractor = FeatureExtractor(args.checkpoint, device=str(device), backend=backend, batch_size=args.batch_size,
                                 amp=args.amp or "off")
    print(extractor)
    return extractor


def _progress(total, desc, disable):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=disable, dynamic_ncols=True, leave=False)


def _write_npz_atomically(path, arrays):
    """np.savez into a temporary file beside `path`, then rename: `path` is never half-written."""
    import tempfile

    import numpy as np

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:  # a file object: savez adds no ".npz" to the name
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def extract(args):
    """Features of a folder / glob / list of images -> .npz with paths, global, spatial."""
    import numpy as np

    from scstn_vcn.engine.image_inputs import list_images

    paths = list_images(args.images, "--images")
    extractor = _feature_extractor(args)
    with _progress(len(paths), "extract", args.no_progress) as bar:
        feats = extractor.extract(paths, progress=bar)
    arrays = {"paths": np.array(paths, dtype=str)}
    arrays.update({name: value.numpy() for name, value in feats.items()})
    _write_npz_atomically(args.output, arrays)
    sizes = ", ".join(f"{name} {value.shape[1]}" for name, value in feats.items())
    print(f"wrote the features of {len(paths)} images ({sizes}) to {args.output}")
    return 0


def search(args):
    """Rank a gallery against one query image; print the top k and draw them."""
    from scstn_vcn.engine.image_inputs import list_images
    from scstn_vcn.engine.search import draw_ranked, rank_gallery

    if args.topk < 1:
        raise UsageError(f"--topk must be a positive integer, got {args.topk}")
    if not os.path.isfile(args.query):
        raise FileNotFoundError(f"--query {args.query}: no such image file")
    gallery = list_images(args.gallery, "--gallery")
    extractor = _feature_extractor(args)
    query_feats = extractor.extract([args.query])
    with _progress(len(gallery), "gallery", args.no_progress) as bar:
        gallery_feats = extractor.extract(gallery, progress=bar)
    distances = extractor.distance(query_feats, gallery_feats)[0]
    ranked = rank_gallery(distances, gallery, args.query, args.topk)
    branch = "fusion" if len(extractor.feature_names) > 1 else extractor.feature_names[0]
    print(f"top {len(ranked)} of {len(gallery)} gallery images for {args.query} ({branch} cosine distance):")
    for rank, index, dist in ranked:
        print(f"{rank:>4}  {dist:.4f}  {gallery[index]}")
    height, width = extractor.input_size
    draw_ranked(args.query, gallery, ranked, height, width, args.output, branch)
    print(f"wrote {args.output}")
    return 0
