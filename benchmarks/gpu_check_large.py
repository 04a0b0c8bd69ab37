"""The large-gallery timer of benchmarks/gpu_check.sh: evaluation with exact k-reciprocal re-ranking at
Market-1501 + 500k distractors (3,368 queries x 515,913 gallery images, one 2,048-d feature) on the GPU:
the exact k-NN pass over all (q + g)^2 = 2.7e11 distances (scstn_vcn.metrics.knn) and the re-ranked rows.
Goal: under 60 s on one GPU.

Features: identities in a low-dimensional subspace with images spread around them and a little isotropic
noise (benchmarks/large_gallery.py's generator, with its calibrated defaults), made on the device.

    python benchmarks/gpu_check_large.py --device cuda --json rerank_large.json
    python benchmarks/gpu_check_large.py --device cpu --queries 50 --gallery 3000 --dim 64 --json x.json  # smoke

Reports the wall time of one evaluate_features call with RerankConfig() (k1 20, k2 6, lambda 0.3; after a
small warm-up call) and the peak memory above the start (torch.cuda.max_memory_allocated on CUDA, VmHWM
on the CPU).
"""

import argparse
import sys

import numpy as np
import torch
from bench_utils import timed_peak, write_json

from scstn_vcn.metrics import RerankConfig, evaluate_features

QUERIES, GALLERY, DIM, CAMERAS = 3368, 515913, 2048, 6


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True)
    parser.add_argument("--queries", type=int, default=QUERIES)
    parser.add_argument("--gallery", type=int, default=GALLERY)
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--rank", type=int, default=64, help="generator: the identities' subspace dimension")
    parser.add_argument("--spread", type=float, default=0.5, help="generator: images around their identity")
    parser.add_argument("--noise", type=float, default=0.01, help="generator: isotropic noise per dimension")
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    if min(args.queries, args.gallery, args.dim, args.rank, args.chunk_size) < 1:
        parser.error("--queries, --gallery, --dim, --rank and --chunk-size must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    return args


def make_data(args, num_query, num_gallery, seed):
    """Query and gallery features ({"global": tensor}) and (q_pids, g_pids, q_camids, g_camids): the
    queries' identities have about 5 gallery images each; the other gallery images are distractors of
    their own identities, about 5 an identity."""
    device = torch.device(args.device)
    gen = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    ids = max(1, num_query // 4)
    q_pids = rng.integers(0, ids, num_query)
    g_pids = np.concatenate([np.arange(ids).repeat(5), ids + np.arange(num_gallery) // 5])[:num_gallery]
    basis = torch.linalg.qr(torch.randn(args.dim, args.rank, generator=gen, device=device))[0].T
    centres = torch.randn(int(g_pids.max()) + 1, args.rank, generator=gen, device=device)

    def feats(pids):
        pids = torch.from_numpy(pids).to(device)
        latent = centres[pids] + args.spread * torch.randn(len(pids), args.rank, generator=gen, device=device)
        return latent @ basis + args.noise * torch.randn(len(pids), args.dim, generator=gen, device=device)

    labels = (q_pids, g_pids, rng.integers(0, CAMERAS, num_query), rng.integers(0, CAMERAS, num_gallery))
    return {"global": feats(q_pids)}, {"global": feats(g_pids)}, labels


def measure(args):
    device = torch.device(args.device)
    kwargs = {"fusion": None, "chunk_size": args.chunk_size, "rerank": RerankConfig(), "fprs": None}
    qf, gf, ids = make_data(args, min(32, args.queries), min(2000, args.gallery), seed=1)
    evaluate_features(qf, gf, *ids, **kwargs)  # warm-up: context, kernels, allocator
    qf, gf, ids = make_data(args, args.queries, args.gallery, seed=0)
    return timed_peak(device, lambda: evaluate_features(qf, gf, *ids, **kwargs))


def main(argv=None):
    args = parse_args(argv)
    seconds, peak, results = measure(args)
    document = {
        "case": "exact k-reciprocal re-ranking, Market-1501 + 500k distractors",
        "device": args.device,
        "queries": args.queries,
        "gallery": args.gallery,
        "dim": args.dim,
        "generator": {"rank": args.rank, "spread": args.spread, "noise": args.noise},
        "chunk_size": args.chunk_size,
        "rerank": RerankConfig().as_dict(),
        "seconds": seconds,
        "goal_seconds": 60,
        "peak_extra_memory_mib": peak,
        "memory_measure": "torch.cuda.max_memory_allocated above the start"
        if args.device == "cuda"
        else "peak RSS (VmHWM) above the start",
        "mAP": results["global"]["mAP"],
        "rk_mAP": results["global+rk"]["mAP"],
        "rk_rank1": results["global+rk"]["rank1"],
    }
    write_json(args.json, document)
    peak_text = "n/a" if peak is None else f"{peak:.0f} MiB"
    print(
        f"exact re-ranking {args.queries} x {args.gallery} ({args.device}): {seconds:.2f} s (goal < 60 s), "
        f"peak extra memory {peak_text}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
