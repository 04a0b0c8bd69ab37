"""`scstn-vcn demo`: synthesise a data set (if absent), train the full model on it, evaluate,
print the table and draw the figures, all under one output folder:

    OUTPUT/data      the synthetic data set (make_synthetic)
    OUTPUT/run       checkpoint.pth, log.csv, config.yaml, results.json
    OUTPUT/figures   training_curves.png, ranked_lists.png, alignment.png, heatmaps.png
"""

import os
import time

from scstn_vcn.configs import load_config
from scstn_vcn.engine.checkpoint import unwrap
from scstn_vcn.engine.commands import config_overrides

# make_synthetic's default (240 identities, ~3,000 128x64 images): 120 to train, 120 to test.
DEMO_IDENTITIES = 240


def _has_data(root):
    return os.path.isdir(root) and any(os.scandir(root))


def run_demo(args):
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
    write_results(os.path.join(run_dir, "results.json"), results, {"checkpoint": trainer.checkpoint_path})
    if not args.no_figures:
        from scstn_vcn import visualize as vis

        figures = os.path.join(output, "figures")
        paths = [vis.plot_training_curves(trainer.logger.path, os.path.join(figures, "training_curves.png"))]
        paths += vis.draw_model_figures(
            unwrap(trainer.model), trainer.dataset, config, trainer.device, figures, ("ranked", "alignment", "heatmap"),
            features=(query, gallery),
        )
        for path in paths:
            print(f"wrote {path}")
    print(f"demo finished in {time.perf_counter() - start:.1f}s; outputs in {output}")
    return 0
