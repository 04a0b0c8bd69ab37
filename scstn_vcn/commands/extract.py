"""`scstn-vcn extract`: the features of image files (a folder, a glob pattern or a .txt list) to one .npz
file with paths, global and spatial, or to a feature folder (one memory-mappable .npy per branch, written
in shards: resumable, and split over the processes under torchrun)."""

from scstn_vcn.commands._common import add_inference_args, feature_extractor, progress, write_npz_atomically
from scstn_vcn.commands.image_inputs import list_images
from scstn_vcn.engine.errors import UsageError

NAME = "extract"
HELP = "features of image files (a folder, glob or list) to .npz or to a feature folder"


def add_arguments(parser):
    add_inference_args(parser)
    parser.add_argument(
        "--images",
        required=True,
        metavar="DIR|GLOB|LIST.txt",
        help="a folder (searched recursively), a quoted glob pattern, or a text file with one path a line",
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="NPZ|DIR",
        help="a .npz file (paths, global, spatial in memory), or a folder: features.json, <branch>.npy, "
        "pids.npy, camids.npy, paths.txt, written shard by shard (run the same command again to resume)",
    )
    folder = parser.add_argument_group("feature folder (an --output that does not end in .npz)")
    folder.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="feature dtype on disk")
    folder.add_argument("--shard-size", type=int, default=8192, metavar="N", help="images per shard (default 8192)")
    folder.add_argument(
        "--labels-from-names",
        action="store_true",
        help="read identity and camera from Market-style file names (0002_c1s1_000451_00.jpg); else -1",
    )


def _labels(paths, from_names):
    if not from_names:
        return None, None
    from pathlib import Path

    from scstn_vcn.data.folder_layout import parse_name

    pairs = [parse_name(Path(p)) for p in paths]
    return [p for p, _ in pairs], [c for _, c in pairs]


def _write_folder(args, paths):
    import os

    from scstn_vcn.engine.distributed import cleanup, init_distributed
    from scstn_vcn.engine.feature_shards import extract_to_folder, file_sha256
    from scstn_vcn.engine.runtime import resolve_device

    if args.shard_size < 1:
        raise UsageError(f"--shard-size must be a positive integer, got {args.shard_size}")
    device = resolve_device(args.device or "auto")
    info = init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        args.device = f"cuda:{info.local_rank}"  # one GPU per process
    try:
        pids, camids = _labels(paths, args.labels_from_names)
        extractor = feature_extractor(args)
        dims = {name: int(extractor.model.feature_dims[name]) for name in extractor.feature_names}
        extra = {
            "checkpoint": os.path.abspath(args.checkpoint),
            "checkpoint_sha256": file_sha256(args.checkpoint),
            "images": args.images,
        }
        with progress(len(paths), f"extract (rank {info.rank})", args.no_progress) as bar:
            result = extract_to_folder(
                lambda chunk: {k: v.numpy() for k, v in extractor.extract(list(chunk)).items()},
                paths,
                args.output,
                dims,
                dtype=args.dtype,
                pids=pids,
                camids=camids,
                shard_size=args.shard_size,
                info=info,
                progress=bar,
                extra=extra,
            )
    finally:
        cleanup(info)
    if result is not None:
        sizes = ", ".join(f"{name} {value.shape[1]}" for name, value in result.feats.items())
        print(f"wrote the features of {result.num_items} images ({sizes}, {args.dtype}) to {args.output}/")
    return 0


def run(args):
    import numpy as np

    paths = list_images(args.images, "--images")
    if not args.output.endswith(".npz"):
        return _write_folder(args, paths)
    extractor = feature_extractor(args)
    with progress(len(paths), "extract", args.no_progress) as bar:
        feats = extractor.extract(paths, progress=bar)
    arrays = {"paths": np.array(paths, dtype=str)}
    arrays.update({name: value.numpy() for name, value in feats.items()})
    write_npz_atomically(args.output, arrays)
    sizes = ", ".join(f"{name} {value.shape[1]}" for name, value in feats.items())
    print(f"wrote the features of {len(paths)} images ({sizes}) to {args.output}")
    return 0
