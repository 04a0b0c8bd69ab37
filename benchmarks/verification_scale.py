"""TPR@FPR at data-set scale: what the verification accumulator (scstn_vcn.metrics.verification) adds to the
streamed evaluation, in time and peak memory, and (--check) its points against scikit-learn's roc_curve on
the full distance matrix.

    # MSMT17 scale (11,659 x 82,161 = 9.6e8 pairs): evaluate_features without and with fprs
    python benchmarks/verification_scale.py --scale msmt17 --dims 256 --json verification-msmt17.json
    # Market-1501 scale, and the check against scikit-learn on the (q, g) matrix of each row
    python benchmarks/verification_scale.py --scale market1501 --dims 256 --check --json verification-market.json
    # per chunk, the accumulator against the ranking's own update, interleaved (robust to a changing load)
    python benchmarks/verification_scale.py --scale msmt17 --dims 256 --per-chunk 6 --json verification-chunks.json

Features: benchmarks/rerank_scale.py's random clustered features (one centre per identity, noise around it).
Both runs are one call of evaluate_features each, in the same process, "without" first; memory is the peak
resident set (VmHWM, reset before each call) above the resident set at its start.
"""

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np
import torch
from bench_utils import write_json
from rerank_scale import SCALES, _dims, make_data, measured

from scstn_vcn.metrics import StreamingRankEvaluator, cosine_distance, evaluate_features
from scstn_vcn.metrics.verification import DEFAULT_FPRS, StreamingVerification, fpr_label


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=tuple(SCALES), required=True)
    parser.add_argument("--dims", type=_dims, default=[256], help="feature dims, e.g. 256 or 256,512 (fused)")
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--spread", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="compare every row with scikit-learn's roc_curve")
    parser.add_argument(
        "--per-chunk",
        type=int,
        metavar="N",
        help="instead: time N query chunks of one row, the ranking's update and the accumulator's interleaved",
    )
    parser.add_argument("--json", required=True)
    return parser.parse_args(argv)


def sklearn_points(dist, ids, fprs):
    """[(fpr, tpr, threshold)] of roc_curve on the kept pairs: the point with the largest FPR <= target."""
    from sklearn.metrics import roc_curve

    q_pids, g_pids, q_camids, g_camids = ids
    same = q_pids[:, None] == g_pids[None, :]
    keep = (g_pids[None, :] != -1) & ~(same & (q_camids[:, None] == g_camids[None, :]))
    fpr, tpr, thresholds = roc_curve(same[keep], -dist[keep], drop_intermediate=False)
    out = []
    for target in fprs:
        i = np.searchsorted(fpr, target, side="right") - 1
        out.append((float(fpr[i]), float(tpr[i]), float(-thresholds[i])))
    return out


def per_chunk_times(args, doc):
    """Median seconds per chunk of StreamingRankEvaluator.update and StreamingVerification.update on the same
    distances, alternating, so that a changing machine load falls on both alike."""
    num_query, num_gallery, num_ids, num_cams = SCALES[args.scale]
    query, gallery, (q_pids, g_pids, q_camids, g_camids) = make_data(
        num_query, num_gallery, num_ids, num_cams, args.dims[:1], args.spread, args.seed
    )
    rank = StreamingRankEvaluator(g_pids, g_camids)
    verification = StreamingVerification(q_pids, q_camids, g_pids, g_camids)
    times = {"rank": [], "verification": []}
    for number in range(args.per_chunk):
        rows = slice(number * args.chunk_size, (number + 1) * args.chunk_size)
        dist = cosine_distance(query["global"][rows], gallery["global"])
        for name, accumulator in (("rank", rank), ("verification", verification)):
            start = time.perf_counter()
            accumulator.update(dist, q_pids[rows], q_camids[rows])
            times[name].append(time.perf_counter() - start)
    doc["per_chunk_seconds"] = {name: times[name] for name in times}
    doc["median_ratio"] = round(float(np.median(times["verification"]) / np.median(times["rank"])), 3)
    print(f"per chunk: rank {np.median(times['rank']):.2f} s, verification {np.median(times['verification']):.2f} s")


def main(argv=None):
    args = parse_args(argv)
    if args.per_chunk:
        doc = {
            "command": "python benchmarks/verification_scale.py " + " ".join(argv or sys.argv[1:]),
            "load_average_at_start": os.getloadavg(),
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        per_chunk_times(args, doc)
        doc["load_average_at_end"] = os.getloadavg()
        write_json(args.json, doc)
        return 0
    num_query, num_gallery, num_ids, num_cams = SCALES[args.scale]
    query, gallery, ids = make_data(num_query, num_gallery, num_ids, num_cams, args.dims, args.spread, args.seed)
    names = ("global", "spatial")[: len(args.dims)]
    fusion = names if len(names) > 1 else None

    def run(fprs):
        return evaluate_features(query, gallery, *ids, chunk_size=args.chunk_size, fusion=fusion, fprs=fprs)

    doc = {
        "command": "python benchmarks/verification_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "scale": args.scale,
        "queries": num_query,
        "gallery": num_gallery,
        "dims": args.dims,
        "chunk_size": args.chunk_size,
        "fprs": list(DEFAULT_FPRS),
        "memory_measure": "peak RSS (VmHWM) above the RSS at the start of the call (the features exist before)",
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    print(f"{args.scale}: {num_query} queries x {num_gallery} gallery, dims {args.dims}", flush=True)
    for label, fprs in (("without", None), ("with", DEFAULT_FPRS)):
        results, seconds, peak = measured(lambda fprs=fprs: run(fprs))
        doc[label] = {"seconds": round(seconds, 2), "peak_extra_mib": None if peak is None else round(peak, 1)}
        print(f"{label} TPR@FPR: {seconds:.1f} s, peak extra {peak:.0f} MiB", flush=True)
    doc["load_average_at_end"] = os.getloadavg()
    doc["time_ratio"] = round(doc["with"]["seconds"] / doc["without"]["seconds"], 3)
    rows = {}
    for name, row in results.items():
        verification = row["verification"]
        rows[name] = {
            "pairs": [verification["num_positive_pairs"], verification["num_negative_pairs"]],
            **{f"TPR@FPR={fpr_label(p['target_fpr'])}": p["tpr"] for p in verification["points"]},
            **{f"threshold@FPR={fpr_label(p['target_fpr'])}": p["threshold"] for p in verification["points"]},
        }
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[name].items() if k.startswith("TPR")))
    doc["rows"] = rows
    if args.check:
        dists = {n: cosine_distance(query[n], gallery[n]).numpy() for n in names}
        if fusion:
            dists["fusion"] = dists["global"] + dists["spatial"]
        doc["check"] = {}
        q_pids, g_pids, q_camids, g_camids = ids
        for name, dist in dists.items():
            # The accumulator fed the full matrix's rows (chunk by chunk, the buffer compacted as in the
            # evaluation) must give scikit-learn's points exactly; evaluate_features' own chunks come from
            # another GEMM, whose roundings can differ in the last bit, so its thresholds are compared loosely.
            acc = StreamingVerification(q_pids, q_camids, g_pids, g_camids, DEFAULT_FPRS)
            for start in range(0, num_query, args.chunk_size):
                rows_ = slice(start, start + args.chunk_size)
                acc.update(torch.from_numpy(dist[rows_]), q_pids[rows_], q_camids[rows_])
            exact = [(p["fpr"], p["tpr"], p["threshold"]) for p in acc.compute()["points"]]
            reference = sklearn_points(dist, ids, DEFAULT_FPRS)
            evaluated = [(p["fpr"], p["tpr"], p["threshold"]) for p in results[name]["verification"]["points"]]
            doc["check"][name] = {
                "accumulator_equals_sklearn": exact == reference,
                "sklearn": reference,
                "evaluate_features": evaluated,
            }
            print(f"check {name}: accumulator == roc_curve: {exact == reference}; {reference}", flush=True)
    write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
