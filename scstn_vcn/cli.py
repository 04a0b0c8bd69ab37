"""Command line: `scstn-vcn {train, eval, demo, visualize, export, extract, search, make-synthetic, study}`.

Mistakes in what the user gave (a missing data folder, a checkpoint of another configuration,
an unavailable backend, a bad --set) end as one line `scstn-vcn COMMAND: error: ...` with exit code 2;
--traceback shows the full trace instead.
"""

import argparse
import sys

from scstn_vcn import __version__


# Errors that describe bad input rather than a bug: shown as one line.
def _user_errors():
    from scstn_vcn.configs import ConfigError
    from scstn_vcn.engine.checkpoint import CheckpointError
    from scstn_vcn.engine.errors import MissingDependencyError, UsageError
    from scstn_vcn.ops import BackendUnavailableError

    return (ConfigError, CheckpointError, UsageError, MissingDependencyError, BackendUnavailableError, FileNotFoundError,
            NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError, ValueError)


def add_config_args(parser, config_default=None):
    group = parser.add_argument_group("configuration")
    group.add_argument("--config", default=config_default,
                       help="a preset name (see `scstn-vcn train --list-configs`) or a YAML file")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one config value, e.g. --set optim.lr=3e-4 (repeatable)")
    group.add_argument("--data-root", help="the data set folder (data.root)")
    group.add_argument("--dataset", help="market1501 | dukemtmcreid | msmt17 | synthetic (data.name)")
    group.add_argument("--seed", type=int, help="random seed (train.seed)")
    group.add_argument("--workers", type=int, help="data loader worker processes (data.workers, eval.workers)")


def add_runtime_args(parser):
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", help="auto | cpu | cuda | cuda:N (train.device)")
    group.add_argument("--amp", choices=("bf16", "fp16", "off"), help="autocast dtype on CUDA (train.amp)")
    group.add_argument("--fused", action="store_true", default=None,
                       help="run every op with its fused backend (triton on CUDA, native on the CPU)")
    group.add_argument("--kernels", choices=("triton", "native"), help="with --fused: which fused backend")
    group.add_argument("--traceback", action="store_true", help="show the full traceback of an error")


def add_inference_args(parser):
    """A trained model applied to image files (extract, search): no data set, no config."""
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a checkpoint written by train or demo")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    add_runtime_args(parser)


def build_parser():
    parser = argparse.ArgumentParser(prog="scstn-vcn", description="SC-STN + VCN person re-identification")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="train a model (torchrun for several processes)")
    add_config_args(p)
    add_runtime_args(p)
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.add_argument("--output", help="run folder for checkpoint, log.csv, results (train.output)")
    p.add_argument("--resume", metavar="PATH", help="continue from this checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--list-configs", action="store_true", help="print the preset names and exit")

    p = sub.add_parser("eval", help="evaluate a checkpoint on a data set's query/gallery split")
    p.add_argument("--checkpoint", required=True, metavar="PATH")
    add_config_args(p)
    add_runtime_args(p)
    p.add_argument("--batch-size", type=int, help="eval.batch_size")
    p.add_argument("--output", metavar="JSON", help="results file (default: results.json beside the checkpoint)")

    p = sub.add_parser("demo", help="synthesise data, train the full model on the CPU, evaluate, draw figures")
    add_config_args(p, config_default="demo")
    add_runtime_args(p)
    p.add_argument("--output", default="scstn_vcn_demo", help="demo folder (data/, run/, figures/)")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.add_argument("--num-identities", type=int, default=None,
                   help="identities to synthesise when the data is absent (default 240: 120 train, 120 test)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")

    p = sub.add_parser("visualize", help="ranked lists, SC-STN alignment, heat maps, training curves (PNG)")
    p.add_argument("--checkpoint", metavar="PATH", help="model checkpoint (ranked/alignment/heatmap)")
    add_config_args(p)
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    p.add_argument("--log", metavar="CSV", help="training log for the curves (default: log.csv beside the checkpoint)")
    p.add_argument("--what", default="curves,ranked,alignment,heatmap",
                   help="comma-separated figures: curves, ranked, alignment, heatmap")
    p.add_argument("--output", default="figures", help="folder for the PNG files")
    p.add_argument("--num-queries", type=int, default=4)
    p.add_argument("--topk", type=int, default=10)

    p = sub.add_parser("export", help="features to .npz, or the inference model to ONNX")
    p.add_argument("--checkpoint", required=True, metavar="PATH")
    p.add_argument("--format", choices=("npz", "onnx"), required=True)
    p.add_argument("--output", required=True, metavar="PATH")
    add_config_args(p)
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    p.add_argument("--opset", type=int, default=20, help="ONNX opset (20: GridSample with the 'linear' mode name)")

    p = sub.add_parser("extract", help="features of image files (a folder, glob or list) to .npz")
    add_inference_args(p)
    p.add_argument("--images", required=True, metavar="DIR|GLOB|LIST.txt",
                   help="a folder (searched recursively), a quoted glob pattern, or a text file with one path a line")
    p.add_argument("--output", required=True, metavar="NPZ", help="writes paths, global, spatial")

    p = sub.add_parser("search", help="rank a gallery of images against a query image; draw the top k")
    add_inference_args(p)
    p.add_argument("--query", required=True, metavar="IMAGE")
    p.add_argument("--gallery", required=True, metavar="DIR|GLOB|LIST.txt")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--output", default="ranked.png", metavar="PNG", help="the figure (default ranked.png)")

    from scstn_vcn.data.synthetic_cli import build_parser as synthetic_parser

    p = synthetic_parser(sub.add_parser("make-synthetic", help="write a small synthetic re-id data set"))
    p.add_argument("--traceback", action="store_true", help="show the full traceback of an error")

    from scstn_vcn.engine.study import add_study_parser

    add_study_parser(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from scstn_vcn.engine import commands
    from scstn_vcn.engine.demo import run_demo
    from scstn_vcn.engine.study import run_study
    from scstn_vcn.data.synthetic_cli import run as synthetic_run

    handler = {
        "train": commands.train,
        "eval": commands.evaluate,
        "demo": run_demo,
        "extract": commands.extract,
        "search": commands.search,
        "visualize": commands.visualize,
        "export": commands.export,
        "make-synthetic": synthetic_run,
        "study": run_study,
    }[args.command]
    try:
        return handler(args) or 0
    except _user_errors() as error:
        if getattr(args, "traceback", False):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"scstn-vcn {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scstn-vcn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
