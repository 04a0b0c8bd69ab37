"""`scstn-vcn search`: rank a gallery of images against one query image, print the top k and draw them; with a
distance threshold (--max-distance, or --fpr for one measured by `eval`) answer "no match" when no gallery image
is close enough."""

import math
import os

import numpy as np

from scstn_vcn.commands._common import add_inference_args, feature_extractor, progress
from scstn_vcn.commands.image_inputs import list_images
from scstn_vcn.commands.search_index import add_index_args, search_index
from scstn_vcn.engine.errors import UsageError
from scstn_vcn.engine.open_set import describe_threshold

NAME = "search"
HELP = "rank a gallery of images against a query image; draw the top k"


def add_arguments(parser):
    add_inference_args(parser, checkpoint_required=False)  # not needed for --index with --query-features
    parser.add_argument("--query", metavar="IMAGE", help="the query image (or --query-features with --index)")
    parser.add_argument("--gallery", metavar="DIR|GLOB|LIST.txt", help="the gallery images (or --index)")
    add_index_args(parser)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--output", default="ranked.png", metavar="PNG", help="the figure (default ranked.png)")
    group = parser.add_argument_group(
        "open-set answers: only gallery images within a distance threshold match; none within it is 'no match'"
    )
    chosen = group.add_mutually_exclusive_group()
    chosen.add_argument("--max-distance", type=float, metavar="D", help="the threshold, a distance set by hand")
    chosen.add_argument(
        "--fpr",
        type=float,
        metavar="FPR",
        help="the threshold measured by `eval` at this target false positive rate: the model file's own (export "
        "--threshold-fpr) if it is for this FPR, else the one in --eval-results",
    )
    group.add_argument(
        "--eval-results",
        metavar="JSON",
        help="with --fpr: the results.json of `scstn-vcn eval` on data like yours (default: the model file's "
        "threshold, then results.json beside --checkpoint)",
    )


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

    if args.index and (args.max_distance is not None or args.fpr is not None):
        raise UsageError(
            "--max-distance / --fpr apply to a --gallery of images; a search with --index has no threshold"
        )
    if args.index:
        return search_index(args)
    if args.checkpoint is None:
        raise UsageError("--checkpoint is required to extract the features of --query and --gallery images")
    if args.query is None or args.gallery is None:
        raise UsageError("give --query IMAGE and --gallery DIR|GLOB|LIST.txt, or --index INDEX (scstn-vcn index)")
    if args.topk < 1:
        raise UsageError(f"--topk must be a positive integer, got {args.topk}")
    if args.eval_results is not None and args.fpr is None:
        raise UsageError("--eval-results only applies with --fpr FPR")
    if not os.path.isfile(args.query):
        raise FileNotFoundError(f"--query {args.query}: no such image file")
    gallery = list_images(args.gallery, "--gallery")
    extractor = feature_extractor(args)
    threshold = search_threshold(args, extractor)  # before the gallery's features: a wrong --fpr fails at once
    query_feats = extractor.extract([args.query])
    with progress(len(gallery), "gallery", args.no_progress) as bar:
        gallery_feats = extractor.extract(gallery, progress=bar)
    distances = extractor.distance(query_feats, gallery_feats)[0]
    ranked = rank_gallery(distances, gallery, args.query, args.topk)
    branch = "fusion" if len(extractor.feature_names) > 1 else extractor.feature_names[0]
    if threshold is None:
        print(f"top {len(ranked)} of {len(gallery)} gallery images for {args.query} ({branch} cosine distance):")
        if extractor.threshold is not None:
            print(f"(the model carries a threshold, {describe_threshold(extractor.threshold)}: --fpr applies it)")
    else:
        nearest = ranked[0] if ranked else None
        ranked = [entry for entry in ranked if entry[2] <= threshold["value"]]
        print(f"threshold: same person when {describe_threshold(threshold)}")
        if ranked:
            print(
                f"{len(ranked)} match(es) among the top {args.topk} of {len(gallery)} gallery images for {args.query}:"
            )
        else:
            closest = f"; the nearest is {nearest[2]:.4f}, {gallery[nearest[1]]}" if nearest else ""
            print(f"no match: no gallery image within {threshold['value']:.4f} of {args.query}{closest}")
    for rank, index, dist in ranked:
        print(f"{rank:>4}  {dist:.4f}  {gallery[index]}")
    height, width = extractor.input_size
    title = None
    if threshold is not None:
        title = (
            f"{f'{len(ranked)} match(es)' if ranked else 'no match'} within {branch} distance {threshold['value']:.3f}"
        )
    draw_ranked(args.query, gallery, ranked, height, width, args.output, branch, title=title)
    print(f"wrote {args.output}")
    return 0


def search_threshold(args, extractor):
    """The threshold record --max-distance / --fpr ask for, or None (plain ranking)."""
    from scstn_vcn.engine import open_set

    distance = open_set.model_distance(extractor.feature_names)
    if args.max_distance is not None:
        return open_set.manual_threshold(args.max_distance, distance)
    if args.fpr is None:
        return None
    own = extractor.threshold
    if args.eval_results is None and own is not None and own.get("target_fpr") is not None:
        if math.isclose(own["target_fpr"], args.fpr, rel_tol=1e-9):
            return own
    if args.eval_results is None and not os.path.isfile(open_set.default_results_path(args.checkpoint)):
        carried = f"a threshold for FPR {own['target_fpr']:g}" if own and own.get("target_fpr") else "no threshold"
        raise UsageError(
            f"--fpr {args.fpr:g}: the model carries {carried}, and there is no results.json beside "
            f"{args.checkpoint}; pass --eval-results JSON (written by `scstn-vcn eval`) or --max-distance D"
        )
    results = args.eval_results or open_set.default_results_path(args.checkpoint)
    return open_set.threshold_from_results(results, args.fpr, distance)
