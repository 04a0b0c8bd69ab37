"""Search over a large gallery: `scstn-vcn index` + `search --index` through the library (GalleryIndex), on a
feature folder of benchmarks/large_gallery.py (or any feature folder). Reports the index's build time,
file size and memory (RssAnon sampled while it is loaded), the time per query for batches of 1 (median and
90th percentile over --queries queries, after --warmup), and recall@k against exact search (the exact
top k by the summed cosine distance, from a blocked pass over the memory-mapped gallery).

    python benchmarks/gallery_search.py --gallery /work/bigdata/large_gallery/market500k/gallery \
        --query /work/bigdata/large_gallery/market500k/query --threads 2 --json search-500k.json
    python benchmarks/gallery_search.py ... --factory PCA64,HNSW32 --params efSearch=128

The index is `scstn-vcn index`'s of --type (auto: PCA64,HNSW32 at 2.36M items; ivf: IVF8192,SQ8), or any
faiss factory string (--factory). It is built once, beside the gallery folder, and reused.

Goal (issue 21): at 2,362,447 items, <= 50 ms a query with 2 threads and recall@10 >= 0.95.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from large_gallery import MemorySampler, save, use_threads  # noqa: E402

from scstn_vcn.metrics.feature_store import open_features  # noqa: E402
from scstn_vcn.metrics.gallery_index import GalleryIndex, normalised_view  # noqa: E402


def exact_topk(gallery, query_vectors, view, k, block=65536):
    """Exact (distance, item) top k of each query vector against the whole gallery, in blocks."""
    best_d = np.full((query_vectors.shape[0], k), np.inf)
    best_i = np.zeros((query_vectors.shape[0], k), dtype=np.int64)
    for start in range(0, gallery.num_items, block):
        stop = min(start + block, gallery.num_items)
        sim = query_vectors.astype(np.float32) @ normalised_view(gallery.feats, view, start, stop).T
        dist = len(view) - sim.astype(np.float64)
        d = np.concatenate([best_d, dist], 1)
        i = np.concatenate([best_i, np.arange(start, stop)[None, :].repeat(len(d), 0)], 1)
        order = np.lexsort((i, d), axis=1)[:, :k]
        best_d, best_i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    return best_d, best_i


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery", required=True, help="a feature folder")
    parser.add_argument("--query", required=True, help="a feature folder of queries")
    parser.add_argument("--index", help="index file (default: gallery.index beside the gallery folder)")
    parser.add_argument("--nprobe", type=int, help="IVF lists searched (default: the index's)")
    parser.add_argument("--type", default="auto", choices=("auto", "flat", "hnsw", "ivf"), help="index type")
    parser.add_argument("--factory", help="a faiss factory string, e.g. PCA64,HNSW32 (default: the default index)")
    parser.add_argument("--params", help="faiss search parameters, e.g. efSearch=128")
    parser.add_argument("--rescore", type=int, default=4)
    parser.add_argument("--train-size", type=int)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    use_threads(args.threads)
    name = f"gallery-{(args.factory or args.type).replace(',', '_')}.index"
    path = args.index or os.path.join(os.path.dirname(os.path.abspath(args.gallery)), name)
    built = build_memory = None
    if not os.path.isfile(path):
        begin = time.perf_counter()
        with MemorySampler() as building:
            index = GalleryIndex.build(
                args.gallery,
                kind=args.type,
                train_size=args.train_size,
                nprobe=args.nprobe,
                factory=args.factory,
                params=args.params,
            )
            index.save(path)
        built, build_memory = time.perf_counter() - begin, building.report()
        del index
    with MemorySampler() as memory:
        index = GalleryIndex.load(path)
        if args.nprobe:
            index.set_nprobe(args.nprobe)
        index.set_params(args.params)
        queries = open_features(args.query, index.view)
        n = min(args.queries, queries.num_items)
        rows = np.random.default_rng(0).choice(queries.num_items, size=n + args.warmup, replace=False)
        times, found = [], []
        for position, row in enumerate(rows):
            q = {name: np.asarray(queries.feats[name][row : row + 1]) for name in index.view}
            begin = time.perf_counter()
            _, ids = index.search(q, args.k, rescore=args.rescore)
            if position >= args.warmup:
                times.append(time.perf_counter() - begin)
                found.append(ids[0])
    sample = rows[args.warmup :]
    qv = normalised_view({name: queries.feats[name][np.sort(sample)] for name in index.view}, index.view, 0, n)
    _, exact = exact_topk(open_features(args.gallery, index.view), qv, index.view, args.k)
    position = np.searchsorted(np.sort(sample), sample)  # qv's rows are in sorted sample order
    recall = np.mean([len(set(found[j]) & set(exact[position[j]])) / args.k for j in range(n)])
    times_ms = sorted(t * 1e3 for t in times)
    payload = {
        "gallery_items": index.num_items,
        "factory": index.meta["factory"],
        "nprobe": index.meta.get("nprobe"),
        "params": index.meta.get("params"),
        "rescore": args.rescore,
        "threads": args.threads,
        "build_seconds": None if built is None else round(built, 1),
        "memory_while_building": build_memory,
        "index_file_bytes": os.path.getsize(path),
        "queries_timed": n,
        "ms_per_query_median": round(statistics.median(times_ms), 2),
        "ms_per_query_p90": round(times_ms[int(0.9 * (n - 1))], 2),
        f"recall_at_{args.k}": round(float(recall), 4),
        "memory_while_searching": memory.report(),
        "goal": "<= 50 ms a query (batch 1, 2 threads), recall@10 >= 0.95 at 2,362,447 items",
    }
    print(payload)
    save(args.json, payload)


if __name__ == "__main__":
    main()
