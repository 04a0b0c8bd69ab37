"""`scstn-vcn demo`: synthesise a data set (if absent), train the full model on it, evaluate,
print the table and draw the figures, all under one output folder:

    OUTPUT/data      the synthetic data set (make_synthetic)
    OUTPUT/run       checkpoint.pth, log.csv, config.yaml, results.json
    OUTPUT/figures   training_curves.png, ranked_lists.png, alignment.png, heatmaps.png

What makes the table reproducible: the data set is drawn from fixed seeds (its bytes depend only on the
numpy and Pillow versions), and training is seeded (sampler, loader worker, augmentations),
deterministic and single-threaded (the demo preset's train.threads: 1). Float rounding in the CPU
kernels of convolution, matmul and reductions still depends on the instruction set PyTorch picks for
the CPU (AVX2 or AVX-512 kernels in ATen, oneDNN and MKL), on the thread count and on the library
versions; forty epochs turn those last-bit differences into different numbers. The demo therefore
prints what its numbers depend on (the data digest, torch, the CPU kernels, the threads): two runs
that print the same line print the same table.
"""

import hashlib
import os
import time

import torch

from scstn_vcn.commands._common import add_config_args, add_runtime_args, config_overrides
from scstn_vcn.configs import load_config
from scstn_vcn.engine.checkpoint import unwrap

NAME = "demo"
HELP = "synthesise data, train the full model on the CPU, evaluate, draw figures"

# make_synthetic's default (240 identities, ~3,000 128x64 images): 120 to train, 120 to test.
DEMO_IDENTITIES = 240


def _has_data(root):
    return os.path.isdir(root) and any(os.scandir(root))


def data_digest(root):
    """(number of images, sha256 of their relative paths and bytes, in sorted order) under `root`."""
    digest = hashlib.sha256()
    count = 0
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in sorted(files):
            if not name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).replace(os.sep, "/").encode() + b"\0")
            with open(path, "rb") as handle:
                digest.update(handle.read())
            count += 1
    return count, digest.hexdigest()


def numerics_fingerprint(config):
    """What the trained numbers depend on besides the data: torch, the CPU kernels it runs, the threads."""
    threads = int(config["train"].get("threads") or 0) or torch.get_num_threads()
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": threads}


def add_arguments(parser):
    add_config_args(parser, config_default="demo")
    add_runtime_args(parser)
    parser.add_argument("--output", default="scstn_vcn_demo", help="demo folder (data/, run/, figures/)")
    parser.add_argument("--epochs", type=int, help="train.epochs")
    parser.add_argument(
        "--num-identities",
        type=int,
        default=None,
        help="identities to synthesise when the data is absent (default 240: 120 train, 120 test)",
    )
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")


def run(args):
    from scstn_vcn.data import make_synthetic
    from scstn_vcn.engine.evaluator import format_table, write_results
    from scstn_vcn.engine.trainer import Trainer

    start = time.perf_counter()
    output = args.output
    data_root = os.path.join(output, "data")
    run_dir = os.path.join(output, "run")
    if args.data_root is None:
        if not _has_data(data_root):
            count = args.num_identities or DEMO_IDENTITIES
            print(f"synthesising {count} identities into {data_root}")
            make_synthetic(data_root, num_identities=count, seed=args.seed or 0)
        elif args.num_identities is not None:
            print(f"using the existing data in {data_root} (--num-identities applies only when it is created)")
    extra = [(["train", "output"], run_dir)]
    if args.data_root is None:
        extra.append((["data", "root"], data_root))
    config = load_config(args.config, config_overrides(args, extra))
    trainer = Trainer(config, progress=not args.no_progress)
    try:
        trainer.fit()
        results, query, gallery = trainer.evaluate()
    finally:
        trainer.close()
    print(format_table(results, metrics=("rank1", "mAP")))
    chance = 100.0 / max(1, len(set(int(p) for p in gallery["pids"])))
    print(f"(chance rank-1 is about {chance:.1f}% for {len(set(int(p) for p in gallery['pids']))} gallery identities)")
    count, digest = data_digest(config["data"]["root"])
    numerics = numerics_fingerprint(config)
    threads = f"{numerics['threads']} thread" + ("s" if numerics["threads"] != 1 else "")
    print(
        f"these numbers repeat for: data {count} images sha256 {digest[:12]}, torch {numerics['torch']}, "
        f"{numerics['cpu_capability']} CPU kernels, {threads}, device {trainer.device.type}"
    )
    write_results(
        os.path.join(run_dir, "results.json"),
        results,
        {
            "checkpoint": trainer.checkpoint_path,
            "data_images": count,
            "data_sha256": digest,
            "device": trainer.device.type,
            **numerics,
        },
    )
    if not args.no_figures:
        from scstn_vcn import figures as fig

        figures = os.path.join(output, "figures")
        paths = [fig.plot_training_curves(trainer.logger.path, os.path.join(figures, "training_curves.png"))]
        paths += fig.draw_model_figures(
            unwrap(trainer.model),
            trainer.dataset,
            config,
            trainer.device,
            figures,
            ("ranked", "alignment", "heatmap"),
            features=(query, gallery),
        )
        for path in paths:
            print(f"wrote {path}")
    print(f"demo finished in {time.perf_counter() - start:.1f}s; outputs in {output}")
    return 0
