"""`scstn-vcn visualize`: training curves from log.csv, a checkpoint's ranked lists, SC-STN alignment and
heat maps, and the verification ROC curve from a results.json or an evaluation (PNG files, drawn by
scstn_vcn.figures)."""

import os

from scstn_vcn.commands._common import add_config_args, add_traceback_arg, load_model_for_inference
from scstn_vcn.engine.errors import UsageError

NAME = "visualize"
HELP = "ranked lists, SC-STN alignment, heat maps, training curves, ROC curve (PNG)"


def add_arguments(parser):
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="a training checkpoint or .safetensors model file (ranked/alignment/heatmap)",
    )
    add_config_args(parser)
    parser.add_argument("--device", help="auto | cpu | cuda")
    add_traceback_arg(parser)
    parser.add_argument(
        "--log", metavar="CSV", help="training log for the curves (default: log.csv beside the checkpoint)"
    )
    parser.add_argument(
        "--what",
        default="curves,ranked,alignment,heatmap",
        help="comma-separated figures: curves, ranked, alignment, heatmap, roc (default: all but roc)",
    )
    parser.add_argument(
        "--results",
        metavar="JSON",
        help="roc: draw the curves recorded in this results.json (written by eval); without it, roc evaluates "
        "--checkpoint on the data set",
    )
    parser.add_argument("--output", default="figures", help="folder for the PNG files")
    parser.add_argument("--num-queries", type=int, default=4)
    parser.add_argument("--topk", type=int, default=10)


def run(args):
    from scstn_vcn import figures

    wanted = [w.strip() for w in args.what.split(",") if w.strip()]
    unknown = set(wanted) - set(figures.FIGURES)
    if unknown:
        raise UsageError(
            f"--what: unknown figure(s) {', '.join(sorted(unknown))}; expected {', '.join(figures.FIGURES)}"
        )
    written = []
    if "curves" in wanted:
        log = args.log
        if log is None and args.checkpoint:
            log = os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "log.csv")
        if log is None:
            raise UsageError("--what curves needs --log CSV or a --checkpoint with log.csv beside it")
        written.append(figures.plot_training_curves(log, os.path.join(args.output, "training_curves.png")))
    roc_path = os.path.join(args.output, "roc.png")
    if "roc" in wanted and args.results:
        from scstn_vcn.engine.open_set import read_verification

        rows, data = read_verification(args.results)
        written.append(figures.roc_figure(rows, roc_path, f"verification ROC on {data or args.results}"))
    model_figures = [w for w in wanted if w not in ("curves", "roc")]
    evaluate = "roc" in wanted and not args.results
    if model_figures or evaluate:
        if not args.checkpoint:
            raise UsageError(
                f"--what {','.join(model_figures + ['roc'] * evaluate)} needs --checkpoint"
                + (" (or, for roc, --results JSON)" if evaluate else "")
            )
        config, model, dataset, device = load_model_for_inference(args)
        features = None
        if evaluate:
            from scstn_vcn.engine.evaluator import evaluate_model
            from scstn_vcn.engine.open_set import verification_section

            results, query, gallery = evaluate_model(model, dataset, config, device)
            features = (query, gallery)
            section = verification_section(results)
            rows = section["rows"] if section else {}
            written.append(figures.roc_figure(rows, roc_path, f"verification ROC on {config['data']['name']}"))
        written += figures.draw_model_figures(
            model,
            dataset,
            config,
            device,
            args.output,
            model_figures,
            num_queries=args.num_queries,
            topk=args.topk,
            features=features,
        )
    for path in written:
        print(f"wrote {path}")
    return 0
