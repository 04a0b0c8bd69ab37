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


def run(args):
    from scstn_vcn import export as exporter

    if args.with_classifiers and args.format != "safetensors":
        raise UsageError(f"--with-classifiers only applies to --format safetensors, not {args.format}")
    if args.format == "safetensors":
        source, config, model = inference_config_and_model(args)
        size = exporter.export_model_file(model, config, source, args.output, with_classifiers=args.with_classifiers)
        kept = "with" if args.with_classifiers else "without"
        print(
            f"exported the {config['model']['backbone']}-{config['model']['variant']} model from {source.kind} "
            f"{args.checkpoint} ({kept} ID classifiers, {size / 2**20:.1f} MiB) to {args.output}"
        )
        return 0
    if args.format == "onnx":
        config, model, _, device = load_model_for_inference(args, need_data=False)
        exporter.export_onnx(model.cpu(), config, args.output, opset=args.opset)
    else:
        config, model, dataset, device = load_model_for_inference(args)
        exporter.export_features(model, dataset, config, device, args.output)
    print(f"exported {args.format} to {args.output}")
    return 0
