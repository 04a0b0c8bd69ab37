"""`scstn-vcn index`: a faiss index over a feature folder (written by `scstn-vcn extract --output DIR`), for
`scstn-vcn search --index`; or more items added to an existing index."""

from scstn_vcn.engine.errors import UsageError

NAME = "index"
HELP = "build a faiss index over a feature folder (or add one to an index) for search --index"


def add_arguments(parser):
    parser.add_argument("--features", required=True, metavar="DIR", help="a feature folder written by extract")
    parser.add_argument("--output", required=True, metavar="INDEX", help="the index file (and INDEX.json beside it)")
    parser.add_argument(
        "--add",
        action="store_true",
        help="add the folder's items to the existing index --output (same model and branches) instead of building",
    )
    parser.add_argument(
        "--type",
        choices=("auto", "flat", "hnsw", "ivf"),
        default="auto",
        help="flat (exact), hnsw (a graph over 64 principal components: PCA64,HNSW32, efSearch 128) or ivf "
        "(IVF<nlist>,SQ8, nprobe 32); auto: flat up to 50,000 items, hnsw above",
    )
    parser.add_argument(
        "--nlist", type=int, metavar="N", help="--type ivf: lists (default about 4 sqrt(N), a power of 2)"
    )
    parser.add_argument(
        "--codes", metavar="CODES", help="--type ivf: vector codes SQ8 (default), SQ4, SQfp16, Flat, PQ<m>"
    )
    parser.add_argument("--nprobe", type=int, metavar="N", help="lists searched by default (IVF; default 32)")
    parser.add_argument(
        "--factory",
        metavar="STRING",
        help="any faiss index factory string instead of --type/--nlist/--codes, e.g. PCA64,HNSW32 (L2 metric)",
    )
    parser.add_argument(
        "--params",
        metavar="NAME=VALUE[,...]",
        help="the index's default faiss search parameters, e.g. efSearch=128 (HNSW) or nprobe=64",
    )
    parser.add_argument(
        "--branches",
        metavar="NAME[,NAME]",
        help="the features the distance sums (default all of the folder's: the fusion)",
    )
    parser.add_argument(
        "--train-size",
        type=int,
        metavar="N",
        help="training rows (IVF: default 64 nlist, at most 1 GiB but 39 nlist; a PCA: at most 1 GiB)",
    )
    parser.add_argument("--threads", type=int, metavar="N", help="faiss threads (default: all cores)")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")


def run(args):
    import os
    import time

    from scstn_vcn.metrics.faiss_index import check_codes, check_params, import_faiss
    from scstn_vcn.metrics.gallery_index import GalleryIndex

    for flag in ("nlist", "nprobe", "train_size", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    if args.codes is not None:
        check_codes(args.codes)
    check_params(args.params, "--params")
    if not args.factory and args.type != "ivf" and (args.nlist or args.codes):
        raise UsageError("--nlist and --codes are for --type ivf")
    if args.factory and (args.type != "auto" or args.nlist or args.codes):
        raise UsageError("--factory names the whole index: give it without --type, --nlist or --codes")
    faiss = import_faiss()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    start = time.perf_counter()
    if args.add:
        if not os.path.isfile(args.output):
            raise UsageError(f"--add: --output {args.output} is not an existing index")
        index = GalleryIndex.load(args.output)
        before = index.num_items
        index.add(args.features)
        if args.nprobe:  # new defaults for the index (a new index takes them in build)
            index.set_nprobe(args.nprobe)
        index.set_params(args.params)
        what = f"added {index.num_items - before} items to"
    else:
        if os.path.exists(args.output):
            raise UsageError(f"--output {args.output} exists; remove it, or use --add to add items to it")
        view = [b.strip() for b in args.branches.split(",")] if args.branches else None
        index = GalleryIndex.build(
            args.features,
            view,
            kind=args.type,
            nlist=args.nlist,
            codes=args.codes,
            factory=args.factory,
            params=args.params,
            nprobe=args.nprobe,
            train_size=args.train_size,
        )
        what = "indexed"
    index.save(args.output)
    print(
        f"{what} {args.features}: {index.num_items} items, {index.meta['factory']} over {'+'.join(index.view)} "
        f"({os.path.getsize(args.output) / 2**20:.1f} MiB, {time.perf_counter() - start:.1f}s) -> {args.output}"
    )
    return 0
