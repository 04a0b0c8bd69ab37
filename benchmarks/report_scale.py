"""The evaluation report at data-set scale: what recording each query's top k costs the streaming evaluation
(time, peak memory), and how long writing the report takes and how large it is.

    python benchmarks/report_scale.py --scale market1501 --json benchmarks/results/report-market1501-cpu-DATE.json
    python benchmarks/report_scale.py --scale msmt17 --dims 256 --no-plain --chunk-size 1024 \
        --json benchmarks/results/report-msmt17-cpu-DATE.json   # one row, the recorded evaluation only

Features: one centre per identity (751 / 3,060 test identities), each image its centre plus 4x standard
normal noise, for a "global" (--dims, default 2048) and a "spatial" feature (default 256) and their fusion:
three rows. Cameras uniform (6 / 15). The evaluation runs twice in one process, without and with
record_topk=K; the report is then written with an SC-STN theta per image (near the identity), so the
alignment images are made too. Images: a 128 x 64 JPEG per query and per gallery image the report shows
(two colours per identity, a stripe per camera, noise; written before the timed part, only those the
report reads): real photographs compress less, so the folder size is a lower bound; the number of files is
what it is. Chromium (--browser, where /usr/bin/chromium exists) times opening index.html to the first
page of queries.

Memory: peak RSS (VmHWM, reset before each measured call) and peak RssAnon (sampled every 5 ms) above
their values at the call's start; the features exist before.
"""

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import threading
import time

import numpy as np
import torch
from bench_utils import reset_peak_rss, status_kib, write_json
from PIL import Image

from scstn_vcn.metrics import evaluate_features
from scstn_vcn.report import ReportRun, write_report

SCALES = {"market1501": (3368, 15913, 751, 6), "msmt17": (11659, 82161, 3060, 15)}


class PeakSampler:
    """Peak VmHWM and sampled RssAnon (KiB) above their start, around a block."""

    def __enter__(self):
        reset_peak_rss()
        self.rss0, self.anon0 = status_kib("VmRSS"), status_kib("RssAnon")
        self.anon_peak, self.stop = self.anon0, False
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        self.start = time.perf_counter()
        return self

    def _sample(self):
        while not self.stop:
            self.anon_peak = max(self.anon_peak, status_kib("RssAnon"))
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        self.stop = True
        self.thread.join()
        self.rss_mib = (status_kib("VmHWM") - self.rss0) / 1024
        self.anon_mib = (self.anon_peak - self.anon0) / 1024


def features(n_q, n_g, ids, cams, dims, seed=0):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, ids, n_q), rng.integers(0, ids, n_g)
    q_cams, g_cams = rng.integers(0, cams, n_q), rng.integers(0, cams, n_g)
    qf, gf = {}, {}
    for name, dim in zip(("global", "spatial"), dims):  # one dim: "global" only, one row
        centres = rng.standard_normal((ids, dim), dtype=np.float32)
        spread = 4.0 * (dim / 2048) ** 0.25
        qf[name] = torch.from_numpy(centres[q_pids] + spread * rng.standard_normal((n_q, dim), dtype=np.float32))
        gf[name] = torch.from_numpy(centres[g_pids] + spread * rng.standard_normal((n_g, dim), dtype=np.float32))
    return qf, gf, q_pids, g_pids, q_cams, g_cams


def write_image(path, pid, cam, rng):
    colours = np.random.default_rng(int(pid)).integers(0, 256, (2, 3))
    pixels = np.empty((128, 64, 3), dtype=np.float32)
    pixels[:64], pixels[64:] = colours[0], colours[1]
    pixels[:, : 4 + 2 * cam] = 30 * (cam % 8)
    pixels += rng.normal(0, 14, pixels.shape)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=SCALES, default="market1501")
    parser.add_argument("--dims", default="2048,256", help="global,spatial feature dims")
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--workdir", help="where images and the report go (default: a temporary folder)")
    parser.add_argument("--browser", action="store_true", help="time opening the page in /usr/bin/chromium")
    parser.add_argument("--no-plain", action="store_true", help="skip the evaluation without records")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    dims = [int(v) for v in args.dims.split(",")]
    n_q, n_g, ids, cams = SCALES[args.scale]
    load_before = os.getloadavg()
    cpu_start = time.process_time()
    qf, gf, q_pids, g_pids, q_cams, g_cams = features(n_q, n_g, ids, cams, dims)
    ids_args = (q_pids, g_pids, q_cams, g_cams)
    out = {"scale": args.scale, "queries": n_q, "gallery": n_g, "dims": dims, "topk": args.topk}

    measured = []
    if not args.no_plain:
        with PeakSampler() as plain:
            evaluate_features(qf, gf, *ids_args, chunk_size=args.chunk_size)
        measured.append(("evaluate", plain))
    with PeakSampler() as recorded:
        results = evaluate_features(qf, gf, *ids_args, chunk_size=args.chunk_size, record_topk=args.topk)
    measured.append(("evaluate_record_topk", recorded))
    for name, m in measured:
        out[name] = {
            "seconds": round(m.seconds, 2),
            "peak_rss_mib": round(m.rss_mib, 1),
            "peak_anon_mib": round(m.anon_mib, 1),
        }
        print(f"{name}: {m.seconds:.1f} s, peak +{m.rss_mib:.0f} MiB RSS, +{m.anon_mib:.0f} MiB anon")

    workdir = args.workdir or tempfile.mkdtemp(prefix="report_scale_")
    images = os.path.join(workdir, "images")
    os.makedirs(images, exist_ok=True)
    q_items = [(os.path.join(images, f"q{i:06d}.jpg"), int(q_pids[i]), int(q_cams[i])) for i in range(n_q)]
    g_items = [(os.path.join(images, f"g{i:06d}.jpg"), int(g_pids[i]), int(g_cams[i])) for i in range(n_g)]
    shown = set()
    for values in results.values():
        records = values["per_query"]
        shown.update(records.top.ravel().tolist())
        shown.update(records.first_index[records.first_index >= 0].tolist())
    rng = np.random.default_rng(1)
    started = time.perf_counter()
    for path, pid, cam in q_items + [g_items[g] for g in sorted(shown)]:
        if not os.path.exists(path):
            write_image(path, pid, cam, rng)
    print(f"wrote {n_q + len(shown)} source images in {time.perf_counter() - started:.0f} s (not timed below)")

    theta = np.zeros((n_q + n_g, 2, 3), dtype=np.float32)
    theta[:, 0, 0] = theta[:, 1, 1] = rng.uniform(0.8, 1.0, n_q + n_g)
    theta[:, :, 2] = rng.uniform(-0.1, 0.1, (n_q + n_g, 2))
    payload = {
        "results": {
            row: {"rank1": round(100 * v["rank1"], 2), "mAP": round(100 * v["mAP"], 2)} for row, v in results.items()
        }
    }
    run = ReportRun(
        "synthetic features", payload, results, theta[:n_q], theta[n_q:], {"model": "none (random features)"}
    )
    folder = os.path.join(workdir, "report")
    shutil.rmtree(folder, ignore_errors=True)
    with PeakSampler() as writing:
        write_report(folder, [run], q_items, g_items)
    thumbs = os.listdir(os.path.join(folder, "thumbs"))
    out["write_report"] = {
        "seconds": round(writing.seconds, 1),
        "peak_rss_mib": round(writing.rss_mib, 1),
        "peak_anon_mib": round(writing.anon_mib, 1),
        "thumbnails": len(thumbs),
        "gallery_items_shown": len(shown),
        "folder_mib": round(folder_bytes(folder) / 2**20, 1),
        "data_js_mib": round(os.path.getsize(os.path.join(folder, "data.js")) / 2**20, 2),
        "threads": min(8, os.cpu_count() or 1),
    }
    print(f"write_report: {out['write_report']}")
    with PeakSampler() as again:
        write_report(folder, [run], q_items, g_items)
    out["write_report_again_seconds"] = round(again.seconds, 1)  # the thumbnails exist: reused

    if args.browser and os.path.exists("/usr/bin/chromium"):
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
            )
            page = browser.new_page()
            started = time.perf_counter()
            page.goto("file://" + os.path.join(folder, "index.html"))
            page.wait_for_selector(".card")
            out["browser_first_page_seconds"] = round(time.perf_counter() - started, 2)
            browser.close()
        print(f"Chromium: first page of queries after {out['browser_first_page_seconds']} s")

    out["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "process_cpu_s": round(time.process_time() - cpu_start, 1),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    if args.json:
        write_json(args.json, out)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
