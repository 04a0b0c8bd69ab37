"""`scstn-vcn make-synthetic`: write the synthetic ReID set (scstn_vcn.data.make_synthetic) to a folder."""

from __future__ import annotations

import argparse

from scstn_vcn.commands._common import add_traceback_arg
from scstn_vcn.data.synthetic import LAYOUTS, make_synthetic
from scstn_vcn.data.synthetic_render import DEFAULT_DETECTION_ERROR, MAX_DETECTION_ERROR

NAME = "make-synthetic"
HELP = "write a small synthetic re-id data set"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="folder to write (the data set folder itself)")
    parser.add_argument("--num-identities", type=int, default=240, help="identities in all (about half train)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images-per-identity", type=int, default=12, help="training images per identity")
    parser.add_argument("--gallery-per-identity", type=int, default=10)
    parser.add_argument("--query-per-identity", type=int, default=2)
    parser.add_argument("--num-cameras", type=int, default=6)
    parser.add_argument("--num-distractors", type=int, default=100, help="gallery images of identity 0")
    parser.add_argument("--num-junk", type=int, default=40, help="gallery images of identity -1")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument(
        "--test-identities",
        type=int,
        default=None,
        metavar="N",
        help="how many of the identities are test identities (even; default: half)",
    )
    parser.add_argument(
        "--detection-error",
        type=float,
        default=DEFAULT_DETECTION_ERROR,
        metavar="E",
        help=f"detection error level in [0, {MAX_DETECTION_ERROR:g}]: person scale in [1-E, 1+E], "
        "shifts up to 0.4E of the height and 0.48E of the width; 0: centred, fixed scale "
        f"(default {DEFAULT_DETECTION_ERROR:g})",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="market",
        help="market: Market-1501's folders (--dataset synthetic); manifest: the same plus manifest.csv "
        "(--dataset manifest --data-root ROOT/manifest.csv); folders: ROOT/<split>/<pid>/<image> "
        "(--dataset folders); the same images in all three",
    )
    parser.add_argument("--workers", type=int, default=0, help="processes drawing images (output is the same)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty folder that is not this set")
    add_traceback_arg(parser)


def run(args: argparse.Namespace) -> int:
    """Write the set the parsed arguments describe (``scstn-vcn make-synthetic`` calls this)."""
    if not 0.0 <= args.detection_error <= MAX_DETECTION_ERROR:
        raise ValueError(
            f"--detection-error: expected a level in [0, {MAX_DETECTION_ERROR:g}], got {args.detection_error:g}"
        )
    root = make_synthetic(
        args.root,
        num_identities=args.num_identities,
        seed=args.seed,
        images_per_identity=args.images_per_identity,
        gallery_per_identity=args.gallery_per_identity,
        query_per_identity=args.query_per_identity,
        num_cameras=args.num_cameras,
        num_distractors=args.num_distractors,
        num_junk=args.num_junk,
        height=args.height,
        width=args.width,
        num_test_identities=args.test_identities,
        detection_error=args.detection_error,
        layout=args.layout,
        overwrite=args.overwrite,
        workers=args.workers,
        verbose=True,
    )
    print(f"synthetic data set in {root}")
    return 0
