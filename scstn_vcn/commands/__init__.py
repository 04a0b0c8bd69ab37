"""The `scstn-vcn` sub-commands, one module each. A command module holds

    NAME                  the sub-command's name on the command line
    HELP                  its one-line help
    add_arguments(parser) its arguments, on the argparse sub-parser
    run(args)             what it does with the parsed arguments; returns the exit code (None: 0)

and builds on the library (scstn_vcn.engine, .extractor, .export, .figures, ...); nothing in the library
imports a command. scstn_vcn/cli.py builds the parser from COMMANDS and dispatches.
"""

# In the order `scstn-vcn --help` lists them.
COMMANDS = (
    "train",
    "eval",
    "demo",
    "visualize",
    "export",
    "convert_checkpoint",
    "extract",
    "search",
    "index",
    "make_synthetic",
    "study",
)
