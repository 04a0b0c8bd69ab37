"""`scstn-vcn train`: train a model from a preset or YAML config (torchrun for several processes), then
evaluate it and write results.json beside the checkpoint."""

import os

from scstn_vcn.commands._common import add_config_args, add_runtime_args, config_overrides

NAME = "train"
HELP = "train a model (torchrun for several processes)"


def add_arguments(parser):
    add_config_args(parser)
    add_runtime_args(parser)
    parser.add_argument("--epochs", type=int, help="train.epochs")
    parser.add_argument("--output", help="run folder for checkpoint, log.csv, results (train.output)")
    parser.add_argument("--resume", metavar="PATH", help="continue from this checkpoint")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    parser.add_argument("--list-configs", action="store_true", help="print the preset names and exit")


def run(args):
    from scstn_vcn.configs import config_from_saved, list_presets, load_config
    from scstn_vcn.engine import checkpoint as ckpt
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
