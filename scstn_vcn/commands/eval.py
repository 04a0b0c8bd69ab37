"""`scstn-vcn eval`: evaluate a checkpoint on a data set's query/gallery split; print the table and write
results.json."""

import os
import time

from scstn_vcn.commands._common import add_config_args, add_runtime_args, load_model_for_inference

NAME = "eval"
HELP = "evaluate a checkpoint on a data set's query/gallery split"


def add_arguments(parser):
    parser.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="a training checkpoint or a .safetensors model file"
    )
    add_config_args(parser)
    add_runtime_args(parser)
    parser.add_argument("--batch-size", type=int, help="eval.batch_size")
    parser.add_argument("--output", metavar="JSON", help="results file (default: results.json beside the checkpoint)")
    add_rerank_args(parser)


# (flag's attribute, eval.* key) of the re-ranking and query-expansion options
RERANK_KEYS = (("rerank_k1", "rerank_k1"), ("rerank_k2", "rerank_k2"), ("rerank_lambda", "rerank_lambda"))
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


def run(args):
    from scstn_vcn.engine.evaluator import eval_settings, evaluate_model, format_table, write_results

    # The flags win over --set, as the other dedicated flags do (they come after it).
    args.overrides = list(getattr(args, "overrides", None) or []) + rerank_overrides(args)
    config, model, dataset, device = load_model_for_inference(args)
    amp = config["train"]["amp"] if device.type == "cuda" else "off"
    settings = eval_settings(config)
    for label, values in (("query expansion", settings["query_expansion"]), ("re-ranking", settings["rerank"])):
        if values:
            print(f"{label}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    start = time.perf_counter()
    results, query, gallery = evaluate_model(model, dataset, config, device, amp)
    print(
        f"{config['data']['name']}: {len(query['pids'])} queries, {len(gallery['pids'])} gallery images "
        f"({time.perf_counter() - start:.1f}s)"
    )
    print(format_table(results))
    path = args.output or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "results.json")
    write_results(
        path,
        results,
        {
            "checkpoint": os.path.abspath(args.checkpoint),
            "dataset": config["data"]["name"],
            "data_root": config["data"]["root"],
        },
    )
    print(f"results written to {path}")
    return 0
