"""Plain evaluation of a large memory-mapped gallery: the gallery pass (one blockwise pass, no row sorted;
scstn_vcn.metrics.gallery_pass) against the streaming path (every query chunk against the whole gallery,
every row sorted). Run by hand (not part of ``pytest benchmarks``):

    python benchmarks/gallery_pass_speed.py --folder /work/bigdata/gp_tmp \\
        --json benchmarks/results/gallery-pass-speed-300k.json

Features: ``--num-query`` x ``--num-gallery`` float32 rows of ``--dim`` written to ``.npy`` files in
``--folder`` (deleted at the end unless ``--keep``) and memory-mapped copy-on-write as
``feature_store.open_features`` maps them. Structure as a trained network's (mean + identity x weight +
camera + context + noise, see benchmarks/rerank_vs_fastreid.py): 751 query identities with about 17
gallery images each, the rest distractors of their own identities, 2% junk (-1), so that negatives come
before positives (mAP well below 1) and the pass has real counting to do.

Each side runs in its own process (``--side pass`` / ``--side sort``), first warmed up on a small problem,
then timed once on the whole set with ``evaluate_features(..., fusion=None, fprs=None,
chunk_size=--chunk, gallery_pass=True / False)``; peak RssAnon is sampled every 20 ms from
/proc/self/status above the level before the call, beside the peak RSS (VmHWM after a reset) and RssFile.
The parent checks that both sides' CMC, mAP and mINP are identical and records /proc/loadavg before and
after. The gallery file's pages are in the page cache for both sides when it fits there (the machine's
RAM): then this measures the sort against the counting, not the disk reads the pass saves.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import torch
from bench_utils import reset_peak_rss, status_kib, write_json

from scstn_vcn.metrics.streaming import evaluate_features

QUERY_IDS, GALLERY_PER_ID, CAMERAS, CONTEXTS = 751, 17, 6, 200
BLOCK = 16384  # rows generated at a time


def _generate(folder, num_query, num_gallery, dim, seed=0):
    rng = np.random.default_rng(seed)
    n = num_query + num_gallery
    per_id = min(GALLERY_PER_ID * QUERY_IDS, num_gallery)
    num_distractor_ids = max(1, (num_gallery - per_id) // 4)
    pids = np.concatenate(
        [
            rng.integers(0, QUERY_IDS, num_query),
            rng.integers(0, QUERY_IDS, per_id),
            QUERY_IDS + rng.integers(0, num_distractor_ids, num_gallery - per_id),
        ]
    )
    cams = rng.integers(0, CAMERAS, n)
    contexts = rng.integers(0, CONTEXTS, n)
    mean = 0.6 * rng.standard_normal(dim, dtype=np.float32)
    identity = 0.8 * rng.standard_normal((QUERY_IDS + num_distractor_ids, dim), dtype=np.float32)
    camera = 0.35 * rng.standard_normal((CAMERAS, dim), dtype=np.float32)
    context = 0.7 * rng.standard_normal((CONTEXTS, dim), dtype=np.float32)
    os.makedirs(folder, exist_ok=True)
    out = {
        "query": np.lib.format.open_memmap(os.path.join(folder, "query.npy"), "w+", np.float32, (num_query, dim)),
        "gallery": np.lib.format.open_memmap(os.path.join(folder, "gallery.npy"), "w+", np.float32, (num_gallery, dim)),
    }
    for start in range(0, n, BLOCK):
        rows = slice(start, min(start + BLOCK, n))
        b = rows.stop - rows.start
        weight = np.exp(0.3 * rng.standard_normal((b, 1), dtype=np.float32))
        noise = 0.5 * np.exp(0.5 * rng.standard_normal((b, 1), dtype=np.float32))
        x = rng.standard_normal((b, dim), dtype=np.float32) * noise + mean
        x += identity[pids[rows]] * weight + camera[cams[rows]] + context[contexts[rows]]
        q_end = max(0, min(rows.stop, num_query) - rows.start)
        if q_end:
            out["query"][rows.start : rows.start + q_end] = x[:q_end]
        if q_end < b:
            g0 = rows.start + q_end - num_query
            out["gallery"][g0 : g0 + b - q_end] = x[q_end:]
    for array in out.values():
        array.flush()
    pids[num_query:][rng.random(num_gallery) < 0.02] = -1  # junk gallery images
    np.save(os.path.join(folder, "pids.npy"), pids)
    np.save(os.path.join(folder, "camids.npy"), cams)


def _load(folder):
    q = np.load(os.path.join(folder, "query.npy"), mmap_mode="c")
    g = np.load(os.path.join(folder, "gallery.npy"), mmap_mode="c")
    pids, cams = np.load(os.path.join(folder, "pids.npy")), np.load(os.path.join(folder, "camids.npy"))
    nq = q.shape[0]
    return q, g, (pids[:nq], pids[nq:], cams[:nq], cams[nq:])


class _Peak:
    """Peaks of RssAnon and RssFile (sampled every 20 ms) and of RSS (VmHWM after a reset), in MiB above
    the levels before the block (RssFile: absolute)."""

    def __enter__(self):
        reset_peak_rss()
        self.base = {f: status_kib(f) for f in ("RssAnon", "VmRSS")}
        self.peak = {"RssAnon": self.base["RssAnon"], "RssFile": status_kib("RssFile")}
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            for field in self.peak:
                self.peak[field] = max(self.peak[field], status_kib(field))
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak_anon_mib = (self.peak["RssAnon"] - self.base["RssAnon"]) / 1024
        self.peak_file_mib = self.peak["RssFile"] / 1024
        self.peak_rss_mib = (status_kib("VmHWM") - self.base["VmRSS"]) / 1024


def _evaluate(q, g, ids, chunk, gallery_pass):
    result = evaluate_features(
        {"global": q}, {"global": g}, *ids, fusion=None, fprs=None, chunk_size=chunk, gallery_pass=gallery_pass
    )["global"]
    return {"cmc": result["cmc"].tolist(), **{k: result[k] for k in ("mAP", "mINP", "num_valid_queries")}}


def run_side(args):
    gallery_pass = args.side == "pass"
    q, g, ids = _load(args.folder)
    small = (q[:256], g[:20000], (ids[0][:256], ids[1][:20000], ids[2][:256], ids[3][:20000]))
    _evaluate(*small, args.chunk, gallery_pass)  # warm-up
    with _Peak() as peak:
        start = time.perf_counter()
        metrics = _evaluate(q, g, ids, args.chunk, gallery_pass)
        seconds = time.perf_counter() - start
    out = {
        "seconds": round(seconds, 2),
        "peak_rss_anon_mib": round(peak.peak_anon_mib, 1),
        "peak_rss_mib": round(peak.peak_rss_mib, 1),
        "peak_rss_file_mib": round(peak.peak_file_mib, 1),
        "cpu_seconds": round(time.process_time(), 1),
        "metrics": metrics,
    }
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", required=True, help="where the .npy features are written (deleted unless --keep)")
    p.add_argument("--num-query", type=int, default=3368)
    p.add_argument("--num-gallery", type=int, default=300_000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--keep", action="store_true", help="keep the feature files")
    p.add_argument("--side", choices=("pass", "sort"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        return run_side(args)
    loadavg = lambda: open("/proc/loadavg").read().split()[:3]  # noqa: E731
    report = {"num_query": args.num_query, "num_gallery": args.num_gallery, "dim": args.dim, "chunk": args.chunk}
    report["torch_threads"], report["load_before"] = torch.get_num_threads(), loadavg()
    try:
        if not os.path.exists(os.path.join(args.folder, "camids.npy")):
            start = time.perf_counter()
            _generate(args.folder, args.num_query, args.num_gallery, args.dim)
            report["generate_seconds"] = round(time.perf_counter() - start, 1)
        for side in ("pass", "sort"):
            command = [sys.executable, __file__, "--side", side, "--folder", args.folder, "--chunk", str(args.chunk)]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            report[side] = json.loads(done.stdout.strip().splitlines()[-1])
            report[f"load_after_{side}"] = loadavg()
            print(side, {k: v for k, v in report[side].items() if k != "metrics"}, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.folder, ignore_errors=True)
    report["identical_metrics"] = report["pass"]["metrics"] == report["sort"]["metrics"]
    report["speedup"] = round(report["sort"]["seconds"] / report["pass"]["seconds"], 2)
    print(json.dumps({k: v for k, v in report.items() if k not in ("pass", "sort")}, indent=1))
    print("mAP", report["pass"]["metrics"]["mAP"], "mINP", report["pass"]["metrics"]["mINP"])
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
