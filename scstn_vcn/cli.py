"""Command line: `scstn-vcn COMMAND ...`, one module per sub-command in scstn_vcn/commands/.

This module only builds the parser and dispatches. Mistakes in what the user gave (a missing data folder,
a checkpoint of another configuration, an unavailable backend, a bad --set) end as one line
`scstn-vcn COMMAND: error: ...` with exit code 2; --traceback shows the full trace instead.
"""

import argparse
import importlib
import sys

from scstn_vcn._version import __version__
from scstn_vcn.commands import COMMANDS


# Errors that describe bad input rather than a bug: shown as one line.
def _user_errors():
    from scstn_vcn.configs import ConfigError
    from scstn_vcn.engine.checkpoint import CheckpointError
    from scstn_vcn.engine.errors import MissingDependencyError, UsageError
    from scstn_vcn.ops import BackendUnavailableError

    return (
        ConfigError,
        CheckpointError,
        UsageError,
        MissingDependencyError,
        BackendUnavailableError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        FileExistsError,
        PermissionError,
        ValueError,
    )


def _command_modules():
    return [importlib.import_module(f"scstn_vcn.commands.{name}") for name in COMMANDS]


def build_parser():
    parser = argparse.ArgumentParser(prog="scstn-vcn", description="SC-STN + VCN person re-identification")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in _command_modules():
        command = sub.add_parser(module.NAME, help=module.HELP)
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
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
