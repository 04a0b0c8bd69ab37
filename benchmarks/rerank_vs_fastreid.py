"""Exact k-reciprocal re-ranking: scstn_vcn.metrics.k_reciprocal_rerank against fast-reid 1.4.0's published
``re_ranking`` (fastreid/evaluation/rerank.py, loaded from the released wheel, not transcribed), at
Market-1501's size, each side in its own process, in one run. Run by hand (not part of ``pytest benchmarks``):

    pip download --no-deps fastreid==1.4.0 -d /tmp/whl
    python benchmarks/rerank_vs_fastreid.py --fastreid-wheel /tmp/whl/fastreid-1.4.0-py3-none-any.whl \\
        --json benchmarks/results/rerank-vs-fastreid-market1501-2048.json

fast-reid's side is what its users run: the three cosine distance matrices (q x g, q x q, g x g) as
``fastreid.utils.compute_dist.compute_cosine_distance`` computes them (F.normalize, 1 - torch.mm, to numpy;
written out here because that module imports faiss), then ``re_ranking(q_g, q_q, g_g, 20, 6, 0.3)``.
``re_ranking`` is loaded by path with importlib from the wheel's own file: rerank.py imports only numpy,
so nothing else of fastreid is needed. Ours: ``k_reciprocal_rerank(query, gallery, RerankConfig())`` on the
same features, from features to the (q, g) matrix as well.

Features (``trained_like_features``): the structure of a trained re-id network's embeddings rather than
isotropic noise. Every image is mean + identity + camera + context + image terms: a mean shared by all
images (different identities still have cosine ~0.15, as ReLU / BN features do), identities drawn around
one of ids / 10 "appearance groups", a per-camera shift, one of 200 contexts (pose / background
prototypes shared across identities: the hard negatives, images of other people in the same context are
about as close as one's own images in another), and per-image noise whose scale, like the weight of the
identity term, varies from image to image (log-normal). Same-identity pairs have cosine ~0.55 on average;
plain cosine ranking gives rank-1 / mAP around 0.8, about a Market-1501 baseline's. Several images per
identity across cameras.

Measured per side: wall time of each repetition (median reported; ours first warms up on a small problem),
peak RSS (VmHWM) and peak RssAnon (sampled every 5 ms from /proc/self/status) above the process's level
before the call (the features exist before). The machine's load: /proc/loadavg at start and end, and the
CPU time of all other processes over the run (/proc/stat busy time minus this run's own processes').
Agreement: max |difference| of the final distances, and CMC / mAP / mINP of both (evaluate_rank_full).
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

import numpy as np
import torch
from bench_utils import reset_peak_rss, status_kib, write_json

RERANK_FILE = "fastreid/evaluation/rerank.py"
K1, K2, LAMBDA = 20, 6, 0.3
CONTEXTS = 200  # shared pose / background prototypes: the hard negatives


def trained_like_features(num_query, num_gallery, num_ids, num_cams, dim, seed):
    """(query, gallery, (q_pids, g_pids, q_camids, g_camids)): float32 features (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    n = num_query + num_gallery
    pids = torch.randint(0, num_ids, (n,), generator=gen)
    cams = torch.randint(0, num_cams, (n,), generator=gen)
    contexts = torch.randint(0, CONTEXTS, (n,), generator=gen)
    mean = 0.6 * torch.randn(dim, generator=gen)
    groups = torch.randn(max(1, num_ids // 10), dim, generator=gen)
    group_of = torch.randint(0, groups.shape[0], (num_ids,), generator=gen)
    identity = 0.6 * groups[group_of] + 0.8 * torch.randn(num_ids, dim, generator=gen)
    camera = 0.35 * torch.randn(num_cams, dim, generator=gen)
    context = 0.7 * torch.randn(CONTEXTS, dim, generator=gen)
    weight = torch.exp(0.3 * torch.randn(n, 1, generator=gen))  # how clearly the image shows its identity
    noise = 0.5 * torch.exp(0.5 * torch.randn(n, 1, generator=gen))
    x = torch.randn(n, dim, generator=gen).mul_(noise)
    x.add_(mean).add_(identity[pids] * weight).add_(camera[cams]).add_(context[contexts])
    ids = (pids[:num_query].numpy(), pids[num_query:].numpy(), cams[:num_query].numpy(), cams[num_query:].numpy())
    return x[:num_query].contiguous(), x[num_query:].contiguous(), ids


class PeakMemory:
    """Peak RssAnon (sampled every 5 ms by a thread) and peak RSS (VmHWM, reset at the start) over a block."""

    def __enter__(self):
        if not reset_peak_rss():
            raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs): Linux only")
        self.base_rss, self.base_anon = status_kib("VmRSS"), status_kib("RssAnon")
        self.peak_anon, self.running = self.base_anon, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak_anon = max(self.peak_anon, status_kib("RssAnon"))
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak_anon = max(self.peak_anon, status_kib("RssAnon"))
        self.peak_rss_mib = (status_kib("VmHWM") - self.base_rss) / 1024
        self.peak_anon_mib = (self.peak_anon - self.base_anon) / 1024


def load_re_ranking(wheel, folder):
    """fast-reid's ``re_ranking``, imported by path from rerank.py as the wheel ships it."""
    with zipfile.ZipFile(wheel) as archive:
        path = archive.extract(RERANK_FILE, folder)
    spec = importlib.util.spec_from_file_location("fastreid_rerank_1_4_0", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.re_ranking


def fastreid_side(query, gallery, re_ranking):
    def cosine(a, b):  # fastreid.utils.compute_dist.compute_cosine_distance
        a = torch.nn.functional.normalize(a, p=2, dim=1)
        b = torch.nn.functional.normalize(b, p=2, dim=1)
        return (1 - torch.mm(a, b.t())).cpu().numpy()

    q_g, q_q, g_g = cosine(query, gallery), cosine(query, query), cosine(gallery, gallery)
    return re_ranking(q_g, q_q, g_g, K1, K2, LAMBDA)


def ours_side(query, gallery, chunk_size):
    from scstn_vcn.metrics import RerankConfig, k_reciprocal_rerank

    return k_reciprocal_rerank(query, gallery, RerankConfig(K1, K2, LAMBDA), chunk_size=chunk_size).numpy()


def run_side(args):
    """In a process of its own: make the features, run one side ``repeats`` times, save the last result."""
    torch.set_num_threads(args.threads)
    query, gallery, _ = trained_like_features(args.queries, args.gallery, args.ids, args.cams, args.dim, args.seed)
    if args.side == "fastreid":
        re_ranking = load_re_ranking(args.fastreid_wheel, args.workdir)
        call = lambda: fastreid_side(query, gallery, re_ranking)  # noqa: E731
    else:
        call = lambda: ours_side(query, gallery, args.chunk_size)  # noqa: E731
        ours_side(query[:200], gallery[:1000], args.chunk_size)  # warm-up: threads, allocator, first calls
    seconds, peaks = [], []
    for _ in range(args.repeats):
        with PeakMemory() as memory:
            start = time.perf_counter()
            out = call()
            seconds.append(time.perf_counter() - start)
        peaks.append(
            {"peak_rss_mib": round(memory.peak_rss_mib, 1), "peak_rss_anon_mib": round(memory.peak_anon_mib, 1)}
        )
        np.save(os.path.join(args.workdir, f"{args.side}.npy"), out)
        del out
    with open(os.path.join(args.workdir, f"{args.side}.json"), "w") as handle:
        json.dump({"seconds": seconds, "memory": peaks}, handle)


def busy_jiffies():
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fastreid-wheel", required=True, help="fastreid-1.4.0-py3-none-any.whl (pip download)")
    parser.add_argument("--json", help="where to write the result (required unless --side)")
    parser.add_argument("--queries", type=int, default=3368)
    parser.add_argument("--gallery", type=int, default=15913)
    parser.add_argument("--ids", type=int, default=751)
    parser.add_argument("--cams", type=int, default=6)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--ours-repeats", type=int, default=3)
    parser.add_argument("--fastreid-repeats", type=int, default=1, help="each run takes about a minute")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side", choices=("ours", "fastreid"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.fastreid_wheel):
        parser.error(f"--fastreid-wheel: no such file {args.fastreid_wheel!r}")
    if args.side is None and not args.json:
        parser.error("--json is required")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.side:
        run_side(args)
        return 0
    from scstn_vcn.metrics import evaluate_rank_full

    argv = sys.argv[1:] if argv is None else argv
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["OPENBLAS_NUM_THREADS"] = str(args.threads)
    doc = {
        "command": "python benchmarks/rerank_vs_fastreid.py " + " ".join(argv),
        "queries": args.queries,
        "gallery": args.gallery,
        "identities": args.ids,
        "cameras": args.cams,
        "dim": args.dim,
        "features": "trained_like_features (module docstring), float32",
        "seed": args.seed,
        "rerank": {"k1": K1, "k2": K2, "lambda_value": LAMBDA},
        "chunk_size": args.chunk_size,
        "threads": args.threads,
        "fastreid": "fastreid 1.4.0 wheel, " + RERANK_FILE + ": re_ranking, plus its three cosine distance matrices",
        "memory_measure": "peak VmHWM and peak RssAnon (sampled every 5 ms) above the process's level before the call",
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": os.getloadavg(),
    }
    hz = os.sysconf("SC_CLK_TCK")
    busy_start, wall_start = busy_jiffies(), time.perf_counter()
    children_start = os.times()
    with tempfile.TemporaryDirectory() as workdir:
        for side, repeats in (("ours", args.ours_repeats), ("fastreid", args.fastreid_repeats)):
            command = [sys.executable, os.path.abspath(__file__), *argv, "--side", side, "--workdir", workdir]
            command += ["--repeats", str(repeats)]
            subprocess.run(command, check=True, env=env)
            with open(os.path.join(workdir, f"{side}.json")) as handle:
                measured = json.load(handle)
            doc[side] = {
                "seconds_median": round(statistics.median(measured["seconds"]), 2),
                "seconds": [round(s, 2) for s in measured["seconds"]],
                "peak_rss_mib": max(m["peak_rss_mib"] for m in measured["memory"]),
                "peak_rss_anon_mib": max(m["peak_rss_anon_mib"] for m in measured["memory"]),
            }
            print(side, doc[side], flush=True)
        ours, ref = np.load(os.path.join(workdir, "ours.npy")), np.load(os.path.join(workdir, "fastreid.npy"))
    children = os.times()
    own = (children.children_user + children.children_system) - (
        children_start.children_user + children_start.children_system
    )
    wall = time.perf_counter() - wall_start
    other = (busy_jiffies() - busy_start) / hz - own
    doc["load"] = {
        "load_average_at_end": os.getloadavg(),
        "run_wall_seconds": round(wall, 1),
        "this_run_cpu_seconds": round(own, 1),
        "other_processes_cpu_seconds": round(max(other, 0.0), 1),
        "other_processes_mean_cores_busy": round(max(other, 0.0) / wall, 2),
    }
    _, _, ids = trained_like_features(args.queries, args.gallery, args.ids, args.cams, 1, args.seed)
    a, b = evaluate_rank_full(ours, *ids), evaluate_rank_full(ref, *ids)
    far = np.abs(ours.astype(np.float64) - ref) > 1e-5
    doc["agreement"] = {
        "max_abs_difference": float(np.abs(ours.astype(np.float64) - ref).max()),
        # Where two GEMMs round two nearly equal distances (within float32 resolution) into opposite
        # orders, a neighbour list differs and the encodings that use it with it.
        "entries_over_1e-5": int(far.sum()),
        "queries_with_entries_over_1e-5": int(far.any(axis=1).sum()),
        "same_cmc": bool(np.array_equal(a["cmc"], b["cmc"])),
        "ours": {"rank1": float(a["cmc"][0]), "mAP": a["mAP"], "mINP": a["mINP"]},
        "fastreid": {"rank1": float(b["cmc"][0]), "mAP": b["mAP"], "mINP": b["mINP"]},
    }
    doc["speedup"] = round(doc["fastreid"]["seconds_median"] / doc["ours"]["seconds_median"], 2)
    print(json.dumps({k: doc[k] for k in ("speedup", "agreement", "load")}, indent=1), flush=True)
    write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
