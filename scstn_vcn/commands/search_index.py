"""`scstn-vcn search --index INDEX`: the top k of a gallery of any size (a faiss index built by `scstn-vcn
index`) for one query image, or for every item of a feature folder (--query-features)."""

import os
import time

from scstn_vcn.engine.errors import UsageError


def add_index_args(parser):
    group = parser.add_argument_group("search an index (scstn-vcn index) instead of --gallery")
    group.add_argument("--index", metavar="INDEX", help="an index written by `scstn-vcn index` (INDEX.json beside it)")
    group.add_argument("--query-features", metavar="DIR", help="search every item of this feature folder")
    group.add_argument("--nprobe", type=int, metavar="N", help="IVF lists searched (default: the index's)")
    group.add_argument(
        "--params",
        metavar="NAME=VALUE[,...]",
        help="faiss search parameters, e.g. efSearch=256 (default: the index's)",
    )
    group.add_argument(
        "--rescore",
        type=int,
        default=4,
        metavar="R",
        help="R x topk candidates re-scored exactly (default 4; a flat index's are exact already)",
    )
    group.add_argument("--results", metavar="JSON", help="with --query-features: write every query's top k here")
    group.add_argument("--threads", type=int, metavar="N", help="faiss threads (default: all cores)")
    group.add_argument(
        "--mmap-index", action="store_true", help="map the index file instead of reading it (IVF lists stay on disk)"
    )


def _check_model(index, checkpoint):
    """The query features must come from the model the gallery's did: compare the checkpoint digests."""
    from scstn_vcn.engine.feature_shards import file_sha256

    wanted = {f.manifest.get("checkpoint_sha256") for f in index.folders} - {None}
    if wanted and file_sha256(checkpoint) not in wanted:
        raise UsageError(
            f"--index {index.meta['folders'][0]['path']}: the gallery's features come from another model than "
            f"--checkpoint {checkpoint}; extract the query with the gallery's model"
        )


def _print_ranked(label, dist, ids, index):
    print(f"top {int((ids >= 0).sum())} of {index.num_items} gallery items for {label}:")
    for rank, (d, item) in enumerate(zip(dist, ids), start=1):
        if item >= 0:
            path, pid, camid = index.metadata(int(item))
            print(f"{rank:>4}  {d:.4f}  {path}  (pid {pid}, cam {camid + 1 if camid >= 0 else '?'})")


def search_index(args):
    from scstn_vcn.metrics.faiss_index import check_params, import_faiss
    from scstn_vcn.metrics.feature_store import open_features
    from scstn_vcn.metrics.gallery_index import GalleryIndex

    if args.topk < 1:
        raise UsageError(f"--topk must be a positive integer, got {args.topk}")
    for flag in ("nprobe", "rescore", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag} must be a positive integer, got {value}")
    check_params(args.params, "--params")
    if (args.query is None) == (args.query_features is None):
        raise UsageError("with --index give one of --query IMAGE or --query-features DIR")
    if args.gallery is not None:
        raise UsageError("--gallery and --index exclude each other (the index is the gallery)")
    faiss = import_faiss()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    index = GalleryIndex.load(args.index, mmap=args.mmap_index)
    if args.nprobe:
        index.set_nprobe(args.nprobe)
    index.set_params(args.params)
    if args.query_features:
        queries = open_features(args.query_features, index.view)
        labels = queries.paths
        feats = queries.feats
    else:
        if args.checkpoint is None:
            raise UsageError("--query IMAGE needs --checkpoint (the gallery's model) to extract its features")
        if not os.path.isfile(args.query):
            raise FileNotFoundError(f"--query {args.query}: no such image file")
        _check_model(index, args.checkpoint)
        from scstn_vcn.commands._common import feature_extractor

        extractor = feature_extractor(args)
        feats = {name: value.numpy() for name, value in extractor.extract([args.query]).items()}
        labels = [args.query]
    start = time.perf_counter()
    dist, ids = index.search({name: feats[name] for name in index.view}, args.topk, rescore=args.rescore)
    seconds = time.perf_counter() - start
    print(
        f"{index.meta['factory']} over {'+'.join(index.view)}: {len(labels)} queries in {seconds * 1e3:.1f} ms "
        f"({seconds * 1e3 / max(len(labels), 1):.2f} ms a query)"
    )
    for row, label in enumerate(labels[:20]):
        _print_ranked(label, dist[row], ids[row], index)
    if len(labels) > 20:
        print(f"... {len(labels) - 20} more queries" + (f" in {args.results}" if args.results else ""))
    if args.results:
        from scstn_vcn.metrics.feature_store import write_json_atomically

        payload = {
            "index": os.path.abspath(args.index),
            "topk": args.topk,
            "queries": [
                {"query": label, "items": [int(i) for i in ids[row]], "distances": [float(d) for d in dist[row]]}
                for row, label in enumerate(labels)
            ],
        }
        write_json_atomically(args.results, payload)
        print(f"wrote {args.results}")
    if args.query is not None and args.output:
        from scstn_vcn.figures import draw_ranked

        kept = [(rank, int(item), float(d)) for rank, (d, item) in enumerate(zip(dist[0], ids[0]), 1) if item >= 0]
        paths = [index.metadata(item)[0] for _, item, _ in kept]
        ranked = [(rank, position, d) for position, (rank, _, d) in enumerate(kept)]
        height, width = extractor.input_size
        draw_ranked(args.query, paths, ranked, height, width, args.output, "+".join(index.view))
        print(f"wrote {args.output}")
    return 0
