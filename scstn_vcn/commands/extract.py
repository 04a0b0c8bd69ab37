"""`scstn-vcn extract`: the features of image files (a folder, a glob pattern or a .txt list) to one .npz
file with paths, global and spatial."""

from scstn_vcn.commands._common import add_inference_args, feature_extractor, progress, write_npz_atomically
from scstn_vcn.commands.image_inputs import list_images

NAME = "extract"
HELP = "features of image files (a folder, glob or list) to .npz"


def add_arguments(parser):
    add_inference_args(parser)
    parser.add_argument(
        "--images",
        required=True,
        metavar="DIR|GLOB|LIST.txt",
        help="a folder (searched recursively), a quoted glob pattern, or a text file with one path a line",
    )
    parser.add_argument("--output", required=True, metavar="NPZ", help="writes paths, global, spatial")


def run(args):
    import numpy as np

    paths = list_images(args.images, "--images")
    extractor = feature_extractor(args)
    with progress(len(paths), "extract", args.no_progress) as bar:
        feats = extractor.extract(paths, progress=bar)
    arrays = {"paths": np.array(paths, dtype=str)}
    arrays.update({name: value.numpy() for name, value in feats.items()})
    write_npz_atomically(args.output, arrays)
    sizes = ", ".join(f"{name} {value.shape[1]}" for name, value in feats.items())
    print(f"wrote the features of {len(paths)} images ({sizes}) to {args.output}")
    return 0
