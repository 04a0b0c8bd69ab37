"""`scstn-vcn convert-checkpoint OLD NEW --trust`: rewrite a version-1 training checkpoint (numpy RNG state) in
the current format, which every other command reads with torch.load(weights_only=True).

Reading OLD means unpickling numpy arrays, which no other command does: hence the explicit --trust. Even then
the unpickler is allowed only the numpy globals a version-1 checkpoint holds (engine.checkpoint), so a file
that would call anything else is still refused. OLD is left as it is; NEW must not exist yet."""

from scstn_vcn.commands._common import add_traceback_arg
from scstn_vcn.engine.errors import UsageError

NAME = "convert-checkpoint"
HELP = "rewrite a version-1 checkpoint in the current, pickle-free format (needs --trust)"


def add_arguments(parser):
    parser.add_argument("old", metavar="OLD", help="the version-1 checkpoint")
    parser.add_argument("new", metavar="NEW", help="where to write the converted checkpoint (must not exist)")
    parser.add_argument(
        "--trust",
        action="store_true",
        help="you trust where OLD came from: it is read with numpy arrays allowed in its pickle",
    )
    add_traceback_arg(parser)


def run(args):
    from scstn_vcn.engine.checkpoint import VERSION, convert_v1_checkpoint

    if not args.trust:
        raise UsageError(
            f"reading {args.old} unpickles numpy arrays, which other commands refuse to do; pass --trust "
            f"if you trust where the file came from"
        )
    state = convert_v1_checkpoint(args.old, args.new)
    print(f"converted {args.old} (format version 1, epoch {state['epoch']}) to {args.new} (format version {VERSION})")
    return 0
