"""`scstn-vcn eval --query-features DIR --gallery-features DIR`: evaluate features already on disk (feature
folders written by `scstn-vcn extract --output DIR --labels-from-names`, of any size): no model, no images.
The gallery is read memory-mapped, a block at a time; the query chunk is sized so that its (chunk, gallery)
distances and sort stay within --memory-gib."""

import os

from scstn_vcn.engine.errors import UsageError

# bytes per (query, gallery) element of a chunk: the distances, the sort's values and indices, the codes
# (streaming.py measures about 21); re-ranking adds about three more float32 matrices
_BYTES_PER_ELEMENT = 24
_RERANK_BYTES_PER_ELEMENT = 12


def add_feature_args(parser):
    group = parser.add_argument_group("evaluate feature folders (scstn-vcn extract --output DIR) instead of a model")
    group.add_argument("--query-features", metavar="DIR", help="the queries' feature folder (with pids and camids)")
    group.add_argument("--gallery-features", metavar="DIR", help="the gallery's feature folder")
    group.add_argument(
        "--memory-gib",
        type=float,
        default=2.0,
        metavar="GIB",
        help="bound on a query chunk's distance matrices (default 2); the chunk is at most eval.chunk_size rows",
    )


def evaluate_feature_folders(args):
    from scstn_vcn.configs import load_config
    from scstn_vcn.engine.evaluator import (
        eval_settings,
        format_table,
        neighbour_search,
        record_neighbours,
        write_results,
    )
    from scstn_vcn.metrics import QueryExpansionConfig, RerankConfig, evaluate_features
    from scstn_vcn.metrics.feature_store import open_features

    if not (args.query_features and args.gallery_features):
        raise UsageError("give both --query-features DIR and --gallery-features DIR")
    if args.checkpoint:
        raise UsageError("--checkpoint and --query-features / --gallery-features exclude each other")
    if not args.output:
        raise UsageError("--output JSON is required with --query-features (there is no checkpoint folder)")
    if args.memory_gib <= 0:
        raise UsageError(f"--memory-gib must be positive, got {args.memory_gib}")
    config = load_config(args.config, args.overrides)
    query, gallery = open_features(args.query_features), open_features(args.gallery_features)
    names = [n for n in query.branches if n in gallery.branches]
    if not names:
        raise UsageError(
            f"--query-features has {query.branches}, --gallery-features has {gallery.branches}: no branch in common"
        )
    settings = eval_settings(config)
    per_element = _BYTES_PER_ELEMENT + (_RERANK_BYTES_PER_ELEMENT if settings["rerank"] else 0)
    budget_rows = max(1, int(args.memory_gib * 2**30 // (per_element * gallery.num_items)))
    chunk = min(int(config["eval"]["chunk_size"]), budget_rows)
    kwargs = {"chunk_size": chunk, "fusion": tuple(names) if len(names) > 1 else None}
    if settings["rerank"]:
        kwargs["rerank"] = RerankConfig(**settings["rerank"])
        kwargs["neighbours"] = neighbour_search(config)
    if settings["query_expansion"]:
        kwargs["query_expansion"] = QueryExpansionConfig(**settings["query_expansion"])
    kwargs["fprs"] = tuple(config["eval"]["fprs"])
    print(f"{query.num_items} queries x {gallery.num_items} gallery items ({', '.join(names)}), chunks of {chunk}")
    results = evaluate_features(
        {n: query.feats[n] for n in names},
        {n: gallery.feats[n] for n in names},
        query.pids,
        gallery.pids,
        query.camids,
        gallery.camids,
        **kwargs,
    )
    print(format_table(results))
    record_neighbours(settings, results)
    extra = {
        "query_features": os.path.abspath(args.query_features),
        "gallery_features": os.path.abspath(args.gallery_features),
        "chunk_size": chunk,
        "eval_settings": settings,
        "neighbours": {row: value["neighbours"] for row, value in results.items() if "neighbours" in value},
    }
    write_results(args.output, results, extra)
    print(f"results written to {args.output}")
    return 0
