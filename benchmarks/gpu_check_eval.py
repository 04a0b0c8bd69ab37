"""The evaluation timer of benchmarks/gpu_check.sh: streaming re-id evaluation (scstn_vcn.metrics.
evaluate_features: global, spatial and fusion, rank-1..10, mAP, mINP) at MSMT17 scale, 11,659 queries x
82,161 gallery images with the paper's 2,048 global + 12,288 spatial dims, on synthetic features.

Reports the wall time of one call (after a small warm-up call that loads the kernels) and the peak
memory above what was allocated before the call (the features themselves excluded): on CUDA
torch.cuda.max_memory_allocated, on the CPU the peak resident set (VmHWM, reset through
/proc/self/clear_refs; None where that cannot be reset).

With --rerank the timed call also computes the k-reciprocal re-ranked rows (scstn_vcn.metrics.RerankConfig:
k1 20, k2 6, lambda 0.3) of every feature and of the fusion, in bounded memory.

    python benchmarks/gpu_check_eval.py --device cuda --json eval.json
    python benchmarks/gpu_check_eval.py --device cuda --rerank --json eval_rerank.json
    python benchmarks/gpu_check_eval.py --device cpu --queries 200 --gallery 2000 --dims 64,128 --json eval.json
"""

import argparse
import sys

import numpy as np
import torch
from bench_utils import timed_peak, write_json

from scstn_vcn.metrics import DEFAULT_CHUNK_SIZE, RerankConfig, evaluate_features

MSMT17_QUERY, MSMT17_GALLERY, MSMT17_IDS, MSMT17_CAMS = 11659, 82161, 3060, 15


def _dims(text):
    try:
        global_dim, spatial_dim = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected GLOBAL,SPATIAL feature dims such as 2048,12288, got {text!r}"
        ) from None
    if min(global_dim, spatial_dim) < 1:
        raise argparse.ArgumentTypeError(f"feature dims must be positive, got {text!r}")
    return {"global": global_dim, "spatial": spatial_dim}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True)
    parser.add_argument("--queries", type=int, default=MSMT17_QUERY)
    parser.add_argument("--gallery", type=int, default=MSMT17_GALLERY)
    parser.add_argument("--dims", type=_dims, default=_dims("2048,12288"))
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--rerank", action="store_true", help="time the evaluation with k-reciprocal re-ranking")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    if min(args.queries, args.gallery, args.chunk_size) < 1:
        parser.error("--queries, --gallery and --chunk-size must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    return args


def _data(num_query, num_gallery, dims, device, seed):
    gen = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed)

    def feats(n):
        return {name: torch.randn(n, dim, generator=gen, device=device) for name, dim in dims.items()}

    ids = (
        rng.integers(0, MSMT17_IDS, num_query),
        rng.integers(0, MSMT17_IDS, num_gallery),
        rng.integers(0, MSMT17_CAMS, num_query),
        rng.integers(0, MSMT17_CAMS, num_gallery),
    )
    return feats(num_query), feats(num_gallery), ids


def measure(args):
    """(seconds, peak extra MiB or None, results) of one evaluate_features call."""
    device = torch.device(args.device)
    rerank = RerankConfig() if args.rerank else None
    # warm-up on a small problem: CUDA context, kernels, allocator
    qf, gf, ids = _data(min(64, args.queries), min(2000, args.gallery), args.dims, device, seed=1)
    evaluate_features(qf, gf, *ids, chunk_size=args.chunk_size, rerank=rerank)
    qf, gf, ids = _data(args.queries, args.gallery, args.dims, device, seed=0)
    return timed_peak(device, lambda: evaluate_features(qf, gf, *ids, chunk_size=args.chunk_size, rerank=rerank))


def main(argv=None):
    args = parse_args(argv)
    seconds, peak, results = measure(args)
    document = {
        "device": args.device,
        "queries": args.queries,
        "gallery": args.gallery,
        "dims": args.dims,
        "chunk_size": args.chunk_size,
        "dtype": "float32",
        "seconds": seconds,
        "peak_extra_memory_mib": peak,
        "memory_measure": (
            "torch.cuda.max_memory_allocated above the start"
            if args.device == "cuda"
            else "peak RSS (VmHWM) above the start"
        ),
        "fusion_mAP": results["fusion"]["mAP"],
        "num_valid_queries": results["fusion"]["num_valid_queries"],
    }
    if args.rerank:
        document["rerank"] = RerankConfig().as_dict()
        document["fusion_rk_mAP"] = results["fusion+rk"]["mAP"]
    write_json(args.json, document)
    peak_text = "n/a" if peak is None else f"{peak:.0f} MiB"
    what = "evaluation with re-ranking" if args.rerank else "evaluation"
    print(
        f"{what} {args.queries} x {args.gallery} ({args.device}): {seconds:.2f} s, peak extra memory {peak_text}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
