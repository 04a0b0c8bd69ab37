"""`scstn-vcn eval`: evaluate a checkpoint on a data set's query/gallery split; print the table and write
results.json."""

import os
import time

from scstn_vcn.commands._common import add_config_args, add_runtime_args, load_model_for_inference

NAME = "eval"
HELP = "evaluate a checkpoint on a data set's query/gallery split"


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True, metavar="PATH")
    add_config_args(parser)
    add_runtime_args(parser)
    parser.add_argument("--batch-size", type=int, help="eval.batch_size")
    parser.add_argument("--output", metavar="JSON", help="results file (default: results.json beside the checkpoint)")


def run(args):
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
