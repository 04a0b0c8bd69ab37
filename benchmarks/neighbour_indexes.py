"""Which faiss index finds re-ranking's k1 + 1 = 21 neighbours over a feature folder pair (queries +
gallery, e.g. benchmarks/large_gallery.py's Market+500k): for each factory string and search parameter,
the recall@21 after exact re-scoring of 2 x 21 candidates (as scstn_vcn.metrics.neighbours does) against
exact neighbours of --rows sampled rows, the search time per row and the index's training and adding time.

    python benchmarks/neighbour_indexes.py --folders /work/bigdata/large_gallery/market500k \\
        --index "PCA64,HNSW32|efSearch=64;efSearch=128;efSearch=256" \\
        --index "PCA64,IVF2048,Flat|nprobe=16;nprobe=64;nprobe=128" --json neighbour-indexes-500k.json

The vectors are the rows L2-normalised (the cosine distance's), indexed under the L2 metric. Run by hand.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from large_gallery import save, use_threads  # noqa: E402

from scstn_vcn.metrics.faiss_index import set_params  # noqa: E402
from scstn_vcn.metrics.feature_store import open_features  # noqa: E402

K = 21


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folders", required=True, help="a folder holding query/ and gallery/ feature folders")
    parser.add_argument("--index", action="append", required=True, help="FACTORY|params;params;...")
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--train", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    import faiss

    use_threads(args.threads)
    q = open_features(os.path.join(args.folders, "query")).feats["global"]
    g = open_features(os.path.join(args.folders, "gallery")).feats["global"]
    x = np.concatenate([np.asarray(q, dtype=np.float32), np.asarray(g, dtype=np.float32)])
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = x.shape[0]
    rows = np.sort(np.random.default_rng(0).choice(n, args.rows, replace=False))
    sim = torch.from_numpy(x[rows]) @ torch.from_numpy(x).T
    exact = torch.topk(sim, K, dim=1).indices.numpy()
    del sim
    train = x[np.random.default_rng(1).choice(n, min(args.train, n), replace=False)]
    out = []
    for spec in args.index:
        factory, params = spec.split("|")
        begin = time.perf_counter()
        index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_L2)
        index.train(train)
        trained = time.perf_counter() - begin
        for start in range(0, n, 65536):
            index.add(x[start : start + 65536])
        built = time.perf_counter() - begin
        for setting in params.split(";"):
            set_params(index, setting)
            begin = time.perf_counter()
            _, found = index.search(x[rows], 2 * K)
            per_row = (time.perf_counter() - begin) / len(rows)
            recall = []
            for r, (row, cand) in enumerate(zip(rows, found)):
                cand = cand[cand >= 0]
                top = cand[np.argsort(-(x[cand] @ x[row]), kind="stable")[:K]]
                recall.append(len(set(top) & set(exact[r])) / K)
            out.append(
                {
                    "factory": factory,
                    "params": setting,
                    "train_seconds": round(trained, 1),
                    "train_plus_add_seconds": round(built, 1),
                    "ms_per_row": round(per_row * 1e3, 3),
                    "all_rows_seconds_estimate": round(per_row * n),
                    f"recall_at_{K}": round(float(np.mean(recall)), 4),
                    "recall_min": round(float(np.min(recall)), 4),
                }
            )
            print(out[-1], flush=True)
        del index
    save(args.json, {"items": n, "rows": len(rows), "threads": args.threads, "results": out})


if __name__ == "__main__":
    main()
