"""The evaluation report of `eval --report DIR [--compare OTHER] [--report-topk K]`, of `train` with
eval.report set and of `study --report` (scstn_vcn.report): the report flags, and evaluated targets turned
into report folders. With several evaluation targets each gets its own folder, DIR/<n>-<data set>."""

import argparse
import copy
import os

from scstn_vcn.engine.errors import UsageError


def add_report_args(parser):
    group = parser.add_argument_group("evaluation report (an offline HTML page of every query's ranked list)")
    group.add_argument(
        "--report",
        metavar="DIR",
        help="write the report folder DIR (open DIR/index.html in a browser; eval.report)",
    )
    group.add_argument(
        "--compare",
        metavar="OTHER",
        help="with --report: a second checkpoint or model file evaluated on the same data, or a report folder "
        "of the same data; the page shows both, queries sorted by the difference of their AP",
    )
    group.add_argument(
        "--report-topk",
        type=int,
        metavar="K",
        help="gallery items shown per query (eval.report_topk, default 10)",
    )


def report_overrides(args):
    """The eval.report / eval.report_topk overrides of the flags given; --compare and --report-topk need
    --report."""
    for flag, value in (("--compare", getattr(args, "compare", None)), ("--report-topk", args.report_topk)):
        if value is not None and not args.report:
            raise UsageError(f"{flag} applies to the report: give --report DIR as well")
    if getattr(args, "compare", None) is not None and not os.path.exists(args.compare):
        raise UsageError(f"--compare {args.compare}: no such checkpoint, model file or report folder")
    out = []
    if args.report:
        out.append((["eval", "report"], args.report))
    if args.report_topk is not None:
        out.append((["eval", "report_topk"], args.report_topk))
    return out


def model_info(config, weights, device):
    """What the page lists beside a model's table: the model, its weights, the input size, the versions."""
    import torch

    from scstn_vcn._version import __version__

    model = config["model"]
    name = f"{model['backbone']}-{model['variant']}" + (f" ({model['ablation']})" if model.get("ablation") else "")
    return {
        "model": name,
        "weights": os.path.abspath(weights),
        "input": f"{config['data']['height']} x {config['data']['width']}",
        "versions": f"scstn-vcn {__version__}, torch {torch.__version__}",
        "device": str(device),
    }


def report_folders(folder, evaluated):
    """DIR for one target, DIR/<n>-<data set> for each of several."""
    if len(evaluated) == 1:
        return [folder]
    return [os.path.join(folder, f"{n}-{target.name}") for n, (target, _) in enumerate(evaluated, 1)]


def target_payload(payload, index):
    """results.json's payload for target `index`: the file's own for the first, its "targets" entry (with
    the shared settings) for the others."""
    if index == 0:
        return {k: v for k, v in payload.items() if k != "targets"}
    entry = payload["targets"][index]
    out = {"results": entry["results"], "units": payload.get("units", "percent")}
    if "eval_settings" in payload:
        out["eval_settings"] = payload["eval_settings"]
    out.update({k: v for k, v in entry.items() if k != "results"})
    if "checkpoint" in payload:
        out["checkpoint"] = payload["checkpoint"]
    return out


def check_report_folders(folder):
    """Fail before evaluating when the folder cannot hold a report."""
    from scstn_vcn.report import ReportError
    from scstn_vcn.report.writer import check_folder

    try:
        check_folder(os.path.abspath(folder))
    except ReportError as error:
        raise UsageError(str(error)) from None


def load_other_model(checkpoint, args, config, device):
    """(config, model on `device`, eval mode) of a second checkpoint or model file, with the flags of the
    command and the evaluation settings of `config` (so that both models are evaluated alike)."""
    from scstn_vcn.commands._common import inference_config_and_model

    other_args = argparse.Namespace(**vars(args))
    other_args.checkpoint = checkpoint
    other_args.config = None  # its own model settings, not those of --config
    _, other_config, model = inference_config_and_model(other_args)
    other_config["eval"] = copy.deepcopy(config["eval"])
    return other_config, model.to(device).eval()


def run_of(results, payload, info, short=None):
    from scstn_vcn.report import ReportRun

    thetas = getattr(results, "thetas", None) or (None, None)
    as_numpy = [None if t is None else t.numpy() for t in thetas]
    weights = info["weights"]
    label = f"{info['model']} · {os.path.basename(os.path.dirname(weights))}/{os.path.basename(weights)}"
    return ReportRun(label, payload, results, as_numpy[0], as_numpy[1], info, short)


def write_reports(folder, evaluated, payload, info, compare=None):
    """The report of every evaluated target [(EvalTarget, EvalResults)] into report_folders(folder, ...);
    `compare`: a report folder, or [(EvalResults, payload, info)] of a second model for each target.
    Returns the paths of the index.html files."""
    from scstn_vcn.report import LoadedRun, read_report, write_report

    written = []
    for index, ((target, results), where) in enumerate(zip(evaluated, report_folders(folder, evaluated))):
        runs = [run_of(results, target_payload(payload, index), info, "A" if compare else None)]
        if isinstance(compare, str):
            runs.append(LoadedRun(read_report(compare), compare))
        elif compare is not None:
            other_results, other_payload, other_info = compare[index]
            runs.append(run_of(other_results, other_payload, other_info, "B"))
        dataset = target.dataset
        written.append(write_report(where, runs, dataset.query, dataset.gallery))
    return written
