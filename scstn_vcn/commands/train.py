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
    parser.add_argument(
        "--eval-target",
        action="append",
        default=[],
        metavar="NAME:ROOT",
        help="also evaluate on this data set after training, e.g. market1501:/data/market or "
        "manifest:my_data.csv (added to eval.targets; repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    parser.add_argument("--list-configs", action="store_true", help="print the preset names and exit")


def run(args):
    from scstn_vcn.configs import config_from_saved, eval_targets, list_presets, load_config
    from scstn_vcn.engine import checkpoint as ckpt
    from scstn_vcn.engine.evaluator import target_records, write_results
    from scstn_vcn.engine.trainer import Trainer

    if args.list_configs:
        print("\n".join(list_presets()))
        return 0
    extra = [(["train", "output"], args.output)] if args.output else []
    if args.resume and not args.config:
        # Continue the run as it was configured; flags and --set still override.
        state = ckpt.load_checkpoint(args.resume)
        config = config_from_saved(state["config"], config_overrides(args, extra), source=f"checkpoint {args.resume}")
    else:
        config = load_config(args.config, config_overrides(args, extra))
    if args.eval_target:
        config["eval"]["targets"] = list(config["eval"]["targets"] or []) + list(args.eval_target)
        eval_targets(config)  # checks the entries
    if config["eval"]["report"] and not args.no_eval:
        from scstn_vcn.commands.eval_report import check_report_folders

        check_report_folders(config["eval"]["report"])  # before training, not after
    trainer = Trainer(config, resume=args.resume, progress=not args.no_progress)
    try:
        trainer.fit()
        if not args.no_eval and trainer.info.is_main:
            if not trainer.targets:
                print("nothing to evaluate: no data set of the run has a query and a gallery split")
                return 0
            evaluated = trainer.evaluate_targets()
            path = os.path.join(config["train"]["output"], "results.json")
            # "results" (and "queries") are the first target's, as with one data set; "targets" has them all.
            extra = {"checkpoint": trainer.checkpoint_path, "targets": target_records(evaluated)}
            payload = write_results(path, evaluated[0][1], extra)
            print(f"results written to {path}")
            if config["eval"]["report"]:
                from scstn_vcn.commands.eval_report import model_info, write_reports

                info = model_info(config, trainer.checkpoint_path, trainer.device)
                for index in write_reports(config["eval"]["report"], evaluated, payload, info):
                    print(f"report written to {index}")
    finally:
        trainer.close()
    return 0
