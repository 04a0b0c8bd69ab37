"""k-reciprocal re-ranking at data-set scale on random clustered features: time and peak extra memory of
scstn_vcn.metrics' bounded-memory re-ranking, and (--dense) of the straightforward dense numpy
implementation (tests/dense_rerank.py: full (q + g)^2 matrices) in the same run, with their agreement.

    # Market-1501 scale, ours and the dense reference, 2,048-d and fused 2,048 + 12,288-d
    python benchmarks/rerank_scale.py --scale market1501 --dims 2048 --dense --json rerank-market.json
    python benchmarks/rerank_scale.py --scale market1501 --dims 2048,12288 --dense --json rerank-market-fused.json
    # MSMT17 scale, ours only (the dense algorithm would need > 100 GB): the whole evaluation,
    # plain and re-ranked rows, through evaluate_features(..., rerank=RerankConfig())
    python benchmarks/rerank_scale.py --scale msmt17 --dims 2048 --json rerank-msmt17.json
    # on a GPU (ours on CUDA, memory = torch.cuda.max_memory_allocated)
    python benchmarks/rerank_scale.py --scale msmt17 --dims 2048,12288 --device cuda --json rerank-msmt17-cuda.json

Features: one centre per identity (Market-1501's 751 test identities, MSMT17's 3,060) drawn from a
standard normal, each image its identity's centre plus ``--spread`` (times (dim / 2048)^(1/4)) times
standard normal noise, per feature; several features (--dims A,B) are ranked by the sum of their cosine
distances (the fusion). Cameras are uniform (6 or 15). Settings k1 = 20, k2 = 6, lambda = 0.3.

Memory: peak resident set (VmHWM, reset through /proc/self/clear_refs before each measured call) above
the resident set at its start, i.e. beyond the features, which are made before; the features' own size
is recorded beside it. "ours" at Market-1501 scale returns the whole (q, g) re-ranked matrix
(k_reciprocal_rerank), as the dense reference does; at MSMT17 scale the evaluation streams it.
"""

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np
import torch
from bench_utils import reset_peak_rss, status_kib, write_json

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from dense_rerank import all_distances, k_reciprocal_dense  # noqa: E402  (the tests' reference)

from scstn_vcn.metrics import (  # noqa: E402
    RerankConfig,
    evaluate_features,
    evaluate_rank_full,
    k_reciprocal_rerank,
)

# (queries, gallery, identities, cameras)
SCALES = {"market1501": (3368, 15913, 751, 6), "msmt17": (11659, 82161, 3060, 15)}
NAMES = ("global", "spatial")


def _dims(text):
    try:
        dims = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected feature dims such as 2048 or 2048,12288, got {text!r}") from None
    if not 1 <= len(dims) <= 2 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected one or two positive feature dims, got {text!r}")
    return dims


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=tuple(SCALES), required=True)
    parser.add_argument("--dims", type=_dims, default=[2048], help="feature dims, e.g. 2048 or 2048,12288 (fused)")
    parser.add_argument("--dense", action="store_true", help="also run the dense numpy reference and compare")
    parser.add_argument("--queries", type=int, help="override the scale's number of queries")
    parser.add_argument("--gallery", type=int, help="override the scale's gallery size")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where ours runs (the dense reference is numpy, on the CPU)",
    )
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--spread", type=float, default=4.0, help="noise around each identity's centre")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    if min(args.chunk_size, args.queries or 1, args.gallery or 1) < 1:
        parser.error("--chunk-size, --queries and --gallery must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    return args


def make_data(num_query, num_gallery, num_ids, num_cams, dims, spread, seed):
    gen = torch.Generator().manual_seed(seed)
    q_pids = torch.randint(0, num_ids, (num_query,), generator=gen)
    g_pids = torch.randint(0, num_ids, (num_gallery,), generator=gen)
    cams = torch.randint(0, num_cams, (num_query + num_gallery,), generator=gen)
    query, gallery = {}, {}
    for name, dim in zip(NAMES, dims, strict=False):
        centers = torch.randn(num_ids, dim, generator=gen)
        # Cosine similarities of independent noise shrink as 1 / sqrt(dim): a wider feature gets
        # proportionally more noise (spread * (dim / 2048)^(1/4)), so that it is about as hard to rank.
        noise = spread * (dim / 2048) ** 0.25
        for pids, out in ((q_pids, query), (g_pids, gallery)):
            feats = torch.randn(pids.shape[0], dim, generator=gen).mul_(noise)
            out[name] = feats.add_(centers[pids])
    ids = (q_pids.numpy(), g_pids.numpy(), cams[:num_query].numpy(), cams[num_query:].numpy())
    return query, gallery, ids


def measured(fn, device="cpu"):
    """(result, seconds, peak memory above the start in MiB or None): the peak RSS on the CPU,
    torch.cuda.max_memory_allocated on CUDA."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        can_reset = reset_peak_rss()
        base = status_kib("VmRSS")
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
        return out, time.perf_counter() - start, (torch.cuda.max_memory_allocated() - base) / 2**20
    seconds = time.perf_counter() - start
    peak = (status_kib("VmHWM") - base) / 1024 if can_reset else None
    return out, seconds, peak


def _mib(peak):
    return "n/a" if peak is None else f"{peak:.0f} MiB"


def run_dense(query, gallery, config):
    """The dense reference from features: the full distance matrix, then re-ranking; times both parts."""
    start = time.perf_counter()
    dist = all_distances({k: v.numpy() for k, v in query.items()}, {k: v.numpy() for k, v in gallery.items()})
    dist = dist.astype(np.float32, copy=False)
    distance_seconds = time.perf_counter() - start
    final = k_reciprocal_dense(dist, next(iter(query.values())).shape[0], config.k1, config.k2, config.lambda_value)
    return final, distance_seconds


def summary(result):
    return {"rank1": result["cmc"][0], "mAP": result["mAP"], "mINP": result["mINP"]}


def main(argv=None):
    args = parse_args(argv)
    num_query, num_gallery, num_ids, num_cams = SCALES[args.scale]
    num_query, num_gallery = args.queries or num_query, args.gallery or num_gallery
    config = RerankConfig()
    query, gallery, ids = make_data(num_query, num_gallery, num_ids, num_cams, args.dims, args.spread, args.seed)
    if args.device == "cuda":
        ours_query = {k: v.cuda() for k, v in query.items()}
        ours_gallery = {k: v.cuda() for k, v in gallery.items()}
        # warm-up: CUDA context and kernels, outside the measurement
        k_reciprocal_rerank({k: v[:64] for k, v in ours_query.items()}, {k: v[:512] for k, v in ours_gallery.items()})
    else:
        ours_query, ours_gallery = query, gallery
    feature_mib = sum(t.numel() * t.element_size() for t in (*query.values(), *gallery.values())) / 2**20
    doc = {
        "command": "python benchmarks/rerank_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "scale": args.scale,
        "queries": num_query,
        "gallery": num_gallery,
        "identities": num_ids,
        "cameras": num_cams,
        "dims": args.dims,
        "dtype": "float32",
        "spread": args.spread,
        "seed": args.seed,
        "rerank": config.as_dict(),
        "chunk_size": args.chunk_size,
        "feature_mib": round(feature_mib, 1),
        "device": args.device,
        "memory_measure": (
            "torch.cuda.max_memory_allocated above the start of the call"
            if args.device == "cuda"
            else "peak RSS (VmHWM) above the RSS at the start of the call (the features exist before)"
        ),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    print(
        f"{args.scale}: {num_query} queries x {num_gallery} gallery, dims {args.dims}, features {feature_mib:.0f} MiB",
        flush=True,
    )
    if args.dense:
        ours, seconds, peak = measured(
            lambda: k_reciprocal_rerank(ours_query, ours_gallery, config, chunk_size=args.chunk_size), args.device
        )
        ours = ours.cpu().numpy()
        doc["ours"] = {
            "what": "k_reciprocal_rerank -> the (q, g) re-ranked matrix",
            "seconds": round(seconds, 2),
            "peak_extra_mib": None if peak is None else round(peak, 1),
        }
        print(f"ours: {seconds:.1f} s, peak extra {_mib(peak)}", flush=True)
        (ref, distance_seconds), seconds, peak = measured(lambda: run_dense(query, gallery, config))
        doc["dense"] = {
            "what": "tests/dense_rerank.py: full distance matrix (numpy) + k_reciprocal_dense",
            "seconds": round(seconds, 2),
            "distance_matrix_seconds": round(distance_seconds, 2),
            "peak_extra_mib": None if peak is None else round(peak, 1),
        }
        print(f"dense: {seconds:.1f} s (distance matrix {distance_seconds:.1f} s), peak extra {_mib(peak)}", flush=True)
        ours_metrics, ref_metrics = evaluate_rank_full(ours, *ids), evaluate_rank_full(ref, *ids)
        far = np.abs(ours - ref) > 1e-5
        doc["agreement"] = {
            "max_abs_difference": float(np.abs(ours - ref).max()),
            # Where the two GEMMs round two nearly equal distances (within float32 resolution) into
            # opposite orders, a neighbour list differs and that item's encoding with it.
            "entries_over_1e-5": int(far.sum()),
            "queries_with_entries_over_1e-5": int(far.any(axis=1).sum()),
            "same_cmc": bool(np.array_equal(ours_metrics["cmc"], ref_metrics["cmc"])),
            "ours": summary(ours_metrics),
            "dense": summary(ref_metrics),
        }
        doc["speedup"] = round(doc["dense"]["seconds"] / doc["ours"]["seconds"], 2)
        if doc["ours"]["peak_extra_mib"] and doc["dense"]["peak_extra_mib"]:
            doc["memory_ratio"] = round(doc["ours"]["peak_extra_mib"] / doc["dense"]["peak_extra_mib"], 4)
        print(
            f"speed-up {doc['speedup']}x, memory ratio {doc.get('memory_ratio')}, "
            f"max |difference| {doc['agreement']['max_abs_difference']:.2e}, same CMC {doc['agreement']['same_cmc']}",
            flush=True,
        )
    else:
        results, seconds, peak = measured(
            lambda: evaluate_features(
                ours_query,
                ours_gallery,
                *ids,
                chunk_size=args.chunk_size,
                rerank=config,
                fusion=NAMES[: len(args.dims)] if len(args.dims) > 1 else None,
            ),
            args.device,
        )
        doc["ours"] = {
            "what": "evaluate_features(..., rerank=RerankConfig()): plain and re-ranked rows, streamed",
            "seconds": round(seconds, 2),
            "peak_extra_mib": None if peak is None else round(peak, 1),
        }
        doc["results"] = {name: {k: float(r[k]) for k in ("rank1", "mAP", "mINP")} for name, r in results.items()}
        print(
            f"ours: {seconds:.1f} s, peak extra {_mib(peak)}; "
            + ", ".join(f"{name} mAP {100 * r['mAP']:.2f}%" for name, r in results.items()),
            flush=True,
        )
    doc["load_average_at_end"] = os.getloadavg()
    write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
