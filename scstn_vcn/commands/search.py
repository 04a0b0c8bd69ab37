"""`scstn-vcn search`: rank a gallery of images against one query image, print the top k and draw them."""

import os

import numpy as np

from scstn_vcn.commands._common import add_inference_args, feature_extractor, progress
from scstn_vcn.commands.image_inputs import list_images
from scstn_vcn.commands.search_index import add_index_args, search_index
from scstn_vcn.engine.errors import UsageError

NAME = "search"
HELP = "rank a gallery of images against a query image; draw the top k"


def add_arguments(parser):
    add_inference_args(parser)
    parser.add_argument("--query", metavar="IMAGE", help="the query image (or --query-features with --index)")
    parser.add_argument("--gallery", metavar="DIR|GLOB|LIST.txt", help="the gallery images (or --index)")
    add_index_args(parser)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--output", default="ranked.png", metavar="PNG", help="the figure (default ranked.png)")


def rank_gallery(distances, gallery_paths, query_path, topk):
    """[(rank, gallery index, distance)] of the `topk` nearest gallery images, nearest first (ties keep
    the gallery's order). The query's own file, if it is in the gallery, is left out."""
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    query_real = os.path.realpath(query_path)
    order = np.argsort(distances, kind="stable")
    kept = [int(i) for i in order if os.path.realpath(gallery_paths[i]) != query_real]
    return [(rank, index, float(distances[index])) for rank, index in enumerate(kept[:topk], start=1)]


def run(args):
    from scstn_vcn.figures import draw_ranked

    if args.index:
        return search_index(args)
    if args.query is None or args.gallery is None:
        raise UsageError("give --query IMAGE and --gallery DIR|GLOB|LIST.txt, or --index INDEX (scstn-vcn index)")
    if args.topk < 1:
        raise UsageError(f"--topk must be a positive integer, got {args.topk}")
    if not os.path.isfile(args.query):
        raise FileNotFoundError(f"--query {args.query}: no such image file")
    gallery = list_images(args.gallery, "--gallery")
    extractor = feature_extractor(args)
    query_feats = extractor.extract([args.query])
    with progress(len(gallery), "gallery", args.no_progress) as bar:
        gallery_feats = extractor.extract(gallery, progress=bar)
    distances = extractor.distance(query_feats, gallery_feats)[0]
    ranked = rank_gallery(distances, gallery, args.query, args.topk)
    branch = "fusion" if len(extractor.feature_names) > 1 else extractor.feature_names[0]
    print(f"top {len(ranked)} of {len(gallery)} gallery images for {args.query} ({branch} cosine distance):")
    for rank, index, dist in ranked:
        print(f"{rank:>4}  {dist:.4f}  {gallery[index]}")
    height, width = extractor.input_size
    draw_ranked(args.query, gallery, ranked, height, width, args.output, branch)
    print(f"wrote {args.output}")
    return 0
