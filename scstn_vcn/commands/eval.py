"""`scstn-vcn eval`: evaluate a checkpoint on the query/gallery split of each data set it is given (by
default those it was trained on and its eval.targets), including data sets it never saw; print a table per
data set and write results.json."""

import os

from scstn_vcn.commands._common import add_config_args, add_runtime_args, load_model_for_inference
from scstn_vcn.commands.eval_features import add_feature_args, evaluate_feature_folders
from scstn_vcn.commands.eval_report import add_report_args, report_overrides
from scstn_vcn.engine.errors import UsageError

NAME = "eval"
HELP = "evaluate a checkpoint on a data set's query/gallery split"


def add_arguments(parser):
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="a training checkpoint or a .safetensors model file (or --query-features / --gallery-features)",
    )
    add_config_args(parser)
    add_runtime_args(parser)
    parser.add_argument("--batch-size", type=int, help="eval.batch_size")
    parser.add_argument("--output", metavar="JSON", help="results file (default: results.json beside the checkpoint)")
    add_rerank_args(parser)
    add_report_args(parser)
    add_feature_args(parser)


# (flag's attribute, eval.* key) of the re-ranking and query-expansion options
RERANK_KEYS = (
    ("rerank_k1", "rerank_k1"),
    ("rerank_k2", "rerank_k2"),
    ("rerank_lambda", "rerank_lambda"),
    ("rerank_neighbours", "rerank_neighbours"),
    ("nprobe", "rerank_nprobe"),
    ("faiss_index", "rerank_faiss_index"),
    ("faiss_params", "rerank_faiss_params"),
)
QE_KEYS = (("qe_k", "qe_k"), ("qe_alpha", "qe_alpha"), ("qe_times", "qe_times"))


def add_rerank_args(parser):
    group = parser.add_argument_group("re-ranking and query expansion (rows '+rk', '+qe' beside the plain ones)")
    group.add_argument(
        "--rerank",
        action="store_true",
        default=None,
        help="k-reciprocal re-ranking (eval.rerank), exact, in memory linear in the data set size",
    )
    group.add_argument("--rerank-k1", type=int, metavar="K1", help="k1 (eval.rerank_k1, default 20; implies --rerank)")
    group.add_argument(
        "--rerank-k2",
        type=int,
        metavar="K2",
        help="k2, 1 .. k1 + 1; 1 turns local query expansion off (eval.rerank_k2, default 6; implies --rerank)",
    )
    group.add_argument(
        "--rerank-lambda",
        type=float,
        metavar="LAMBDA",
        help="weight of the original distance, in [0, 1] (eval.rerank_lambda, default 0.3; implies --rerank)",
    )
    group.add_argument(
        "--rerank-neighbours",
        choices=("auto", "exact", "faiss-flat", "faiss-ivf", "faiss"),
        help="how re-ranking finds the k1 + 1 nearest items (eval.rerank_neighbours; default auto: exact up to "
        "150,000 items, faiss-ivf above; faiss-ivf and faiss are approximate and record their measured recall; "
        "implies --rerank)",
    )
    group.add_argument(
        "--nprobe", type=int, metavar="N", help="faiss-ivf: lists searched (eval.rerank_nprobe, default 32)"
    )
    group.add_argument(
        "--faiss-index",
        metavar="FACTORY",
        help="--rerank-neighbours faiss: the index's faiss factory string, e.g. PCA64,HNSW32 "
        "(eval.rerank_faiss_index; implies --rerank)",
    )
    group.add_argument(
        "--faiss-params",
        metavar="PARAMS",
        help="--rerank-neighbours faiss: search parameters, e.g. efSearch=128 or nprobe=64 (eval.rerank_faiss_params; "
        "default efSearch=128 for HNSW, nprobe=--nprobe for IVF)",
    )
    group.add_argument(
        "--query-expansion",
        action="store_true",
        default=None,
        help="alpha-query expansion (eval.query_expansion); with --rerank, re-ranks the expanded features",
    )
    group.add_argument(
        "--qe-k", type=int, metavar="K", help="neighbours averaged (eval.qe_k, default 10; implies --query-expansion)"
    )
    group.add_argument(
        "--qe-alpha",
        type=float,
        metavar="ALPHA",
        help="similarity exponent (eval.qe_alpha, default 3; implies --query-expansion)",
    )
    group.add_argument(
        "--qe-times", type=int, metavar="N", help="rounds (eval.qe_times, default 1; implies --query-expansion)"
    )


def rerank_overrides(args):
    """The eval.* overrides of the re-ranking / query-expansion flags that were given; a setting implies
    its switch."""
    out = []
    for switch, keys in (("rerank", RERANK_KEYS), ("query_expansion", QE_KEYS)):
        given = [(key, getattr(args, attr)) for attr, key in keys if getattr(args, attr, None) is not None]
        if getattr(args, switch, None) or given:
            out.append((["eval", switch], True))
        out += [(["eval", key], value) for key, value in given]
    return out


def _data_given(args):
    """Whether the command line names the data (--dataset, --data-root, or --set data.name / data.root)."""
    keys = {str(item).split("=", 1)[0].strip() for item in getattr(args, "overrides", None) or []}
    return args.dataset is not None or args.data_root is not None or bool(keys & {"data.name", "data.root"})


def run(args):
    from scstn_vcn.configs import data_sets
    from scstn_vcn.engine.builders import build_eval_targets
    from scstn_vcn.engine.evaluator import eval_settings, evaluate_targets, target_records, write_results

    # The flags win over --set, as the other dedicated flags do (they come after it).
    args.overrides = list(getattr(args, "overrides", None) or []) + rerank_overrides(args) + report_overrides(args)
    if args.query_features or args.gallery_features:
        return evaluate_feature_folders(args)
    if not args.checkpoint:
        raise UsageError("give --checkpoint PATH (or --query-features DIR and --gallery-features DIR)")
    if args.report:
        from scstn_vcn.commands.eval_report import check_report_folders

        check_report_folders(args.report)
    config, model, _, device, source = load_model_for_inference(args, need_data=False, with_source=True)
    if _data_given(args):
        # The data sets named here, and only they (not the eval.targets the model was trained with).
        config["eval"]["targets"] = []
    # What the model was trained on: its identity's record, or for older files the data set names alone.
    records = source.identity.get("trained_on")
    if not isinstance(records, list):
        records = [{"dataset": name} for name, _ in data_sets(source.config)]
    targets = build_eval_targets(config, trained_on=records)
    amp = config["train"]["amp"] if device.type == "cuda" else "off"
    settings = eval_settings(config)
    for label, values in (("query expansion", settings["query_expansion"]), ("re-ranking", settings["rerank"])):
        if values:
            print(f"{label}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    evaluated = evaluate_targets(model, targets, config, device, amp)
    path = args.output or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "results.json")
    first = evaluated[0][0]
    # "results" (and "queries", "dataset", "data_root") are the first target's; "targets" has every one.
    payload = write_results(
        path,
        evaluated[0][1],
        {
            "checkpoint": os.path.abspath(args.checkpoint),
            "dataset": first.name,
            "data_root": os.path.abspath(first.root),
            "targets": target_records(evaluated),
        },
    )
    print(f"results written to {path}")
    from scstn_vcn.figures import write_roc_figures

    for figure in write_roc_figures(os.path.dirname(os.path.abspath(path)), evaluated):
        print(f"ROC curve written to {figure}")
    if args.report:
        _write_report(args, config, model, device, amp, evaluated, payload)
    return 0


def _write_report(args, config, model, device, amp, evaluated, payload):
    """The report folder(s) of --report, with --compare's second model evaluated on the same targets."""
    from scstn_vcn.commands import eval_report as er
    from scstn_vcn.engine.evaluator import evaluate_model, format_table, write_results

    info = er.model_info(config, args.checkpoint, device)
    compare = args.compare
    if compare is not None and not os.path.isdir(compare):
        other_config, other_model = er.load_other_model(compare, args, config, device)
        other_info = er.model_info(other_config, compare, device)
        compare = []
        for (target, _), folder in zip(evaluated, er.report_folders(args.report, evaluated)):
            results, _, _ = evaluate_model(other_model, target.dataset, other_config, device, amp)
            print(f"compared model {args.compare} on {target.label}:\n{format_table(results)}")
            extra = {"checkpoint": os.path.abspath(args.compare), "dataset": target.name, "data_root": target.root}
            # Its results.json, in the report folder (the page's second table).
            other_payload = write_results(os.path.join(folder, "results-compare.json"), results, extra)
            compare.append((results, other_payload, other_info))
    for index in er.write_reports(args.report, evaluated, payload, info, compare):
        print(f"report written to {index}")
