"""`scstn-vcn export`: a model's query/gallery features to .npz, its inference model to ONNX, or the model to
share as a .safetensors model file (weights and configuration, no optimizer, no pickle)."""

from scstn_vcn.commands._common import (
    add_config_args,
    add_traceback_arg,
    inference_config_and_model,
    load_model_for_inference,
)
from scstn_vcn.engine.errors import UsageError

NAME = "export"
HELP = "features to .npz, the inference model to ONNX, or a model file to share (.safetensors)"


def add_arguments(parser):
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="a checkpoint written by train or demo, or a .safetensors model file",
    )
    parser.add_argument("--format", choices=("npz", "onnx", "safetensors"), required=True)
    parser.add_argument("--output", required=True, metavar="PATH")
    parser.add_argument(
        "--with-classifiers",
        action="store_true",
        help="safetensors: also write the ID classifiers (only training uses them)",
    )
    add_config_args(parser)
    parser.add_argument("--device", help="auto | cpu | cuda")
    add_traceback_arg(parser)
    parser.add_argument("--opset", type=int, default=20, help="ONNX opset (20: GridSample with the 'linear' mode name)")
    group = parser.add_argument_group(
        "threshold (safetensors): the distance under which two images are the same person, carried by the model "
        "file for `search --fpr` and FeatureExtractor.verify; a model file's own threshold is kept otherwise"
    )
    chosen = group.add_mutually_exclusive_group()
    chosen.add_argument("--threshold", type=float, metavar="D", help="this distance, set by hand")
    chosen.add_argument(
        "--threshold-fpr",
        type=float,
        metavar="FPR",
        help="the threshold `eval` measured at this target FPR (one of eval.fprs), read from --results",
    )
    chosen.add_argument("--no-threshold", action="store_true", help="drop the threshold a model file carries")
    group.add_argument(
        "--results",
        metavar="JSON",
        help="with --threshold-fpr: the results.json of `scstn-vcn eval` (default: results.json beside --checkpoint)",
    )


def run(args):
    from scstn_vcn import export as exporter

    if args.with_classifiers and args.format != "safetensors":
        raise UsageError(f"--with-classifiers only applies to --format safetensors, not {args.format}")
    threshold_flags = [flag for flag, given in _threshold_flags(args) if given]
    if threshold_flags and args.format != "safetensors":
        raise UsageError(f"{threshold_flags[0]} only applies to --format safetensors, not {args.format}")
    if args.results is not None and args.threshold_fpr is None:
        raise UsageError("--results only applies with --threshold-fpr FPR")
    if args.format == "safetensors":
        source, config, model = inference_config_and_model(args)
        threshold = _chosen_threshold(args, source, model)
        size = exporter.export_model_file(
            model, config, source, args.output, with_classifiers=args.with_classifiers, threshold=threshold
        )
        kept = "with" if args.with_classifiers else "without"
        print(
            f"exported the {config['model']['backbone']}-{config['model']['variant']} model from {source.kind} "
            f"{args.checkpoint} ({kept} ID classifiers, {size / 2**20:.1f} MiB) to {args.output}"
        )
        if threshold is not None:
            from scstn_vcn.engine.open_set import describe_threshold

            print(f"threshold: same person when {describe_threshold(threshold)}")
        return 0
    if args.format == "onnx":
        config, model, _, device = load_model_for_inference(args, need_data=False)
        exporter.export_onnx(model.cpu(), config, args.output, opset=args.opset)
    else:
        config, model, dataset, device = load_model_for_inference(args)
        exporter.export_features(model, dataset, config, device, args.output)
    print(f"exported {args.format} to {args.output}")
    return 0


def _threshold_flags(args):
    return [
        ("--threshold", args.threshold is not None),
        ("--threshold-fpr", args.threshold_fpr is not None),
        ("--no-threshold", args.no_threshold),
    ]


def _chosen_threshold(args, source, model):
    """The threshold record the model file will carry: --threshold D, --threshold-fpr's from results.json, none
    with --no-threshold, else the one the source model file carries (a threshold is the model's data)."""
    from scstn_vcn.engine import open_set

    distance = open_set.model_distance([n for n in ("global", "spatial") if n in model.feature_dims])
    if args.no_threshold:
        return None
    if args.threshold is not None:
        return open_set.manual_threshold(args.threshold, distance)
    if args.threshold_fpr is not None:
        results = args.results or open_set.default_results_path(args.checkpoint)
        return open_set.threshold_from_results(results, args.threshold_fpr, distance)
    return source.threshold
