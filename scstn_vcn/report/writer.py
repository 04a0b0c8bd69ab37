"""Writing an evaluation report folder, and reading one back (to compare a new evaluation with it).

    DIR/index.html   the page (open it by double-clicking: file://, no server, no network)
    DIR/data.js      window.SCSTN_REPORT = {...}: every number the page shows (file:// pages cannot fetch
                     a local JSON file in Chromium, but they can load a script)
    DIR/report.js, report.css   the page's script and style (scstn_vcn/report/assets)
    DIR/thumbs/      the images, resized once (scstn_vcn.report.thumbnails)

index.html is written last: a folder with an index.html holds a complete report. Every file goes to a
temporary name beside it and is renamed.

SC-STN alignment: for a model with a spatial branch, every query and its top match in the "spatial" row
(the first ranked item) are shown resampled with their theta, from the theta the feature extraction
already computed (no extra forward pass); at thumbnail size that is about 2 kB per image.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from dataclasses import dataclass, field

import numpy as np

from scstn_vcn._version import __version__
from scstn_vcn.engine.checkpoint import atomic_write

from . import thumbnails
from .page import GENERATOR, render_page
from .records import ReportError, items_digest, run_data

DATA_FILE = "data.js"
DATA_PREFIX = "window.SCSTN_REPORT = "
FORMAT = "scstn-vcn-report"
FORMAT_VERSION = 1
ASSETS = ("report.js", "report.css")
ASSET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
ALIGN_ROW = "spatial"


@dataclass
class ReportRun:
    """One evaluated model: ``results`` from evaluate_features / evaluate_model with per-query records,
    ``payload`` the results.json dict write_results returned for them, ``query_theta`` / ``gallery_theta``
    (N, 2, 3) the SC-STN theta of each image (None without a spatial branch), ``info`` what the page lists
    beside the table (model, version ...), ``short`` its name in a comparison."""

    label: str
    payload: dict
    results: dict
    query_theta: np.ndarray | None = None
    gallery_theta: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    short: str | None = None


@dataclass
class LoadedRun:
    """A run read back from an earlier report folder (read_report)."""

    data: dict
    folder: str


def read_report(folder):
    """The data of the report in `folder` (a report folder or its index.html / data.js)."""
    if os.path.isfile(folder):
        folder = os.path.dirname(os.path.abspath(folder))
    path = os.path.join(folder, DATA_FILE)
    if not os.path.isfile(path):
        raise ReportError(f"report {folder}: no {DATA_FILE} (expected a folder written by `scstn-vcn eval --report`)")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if not text.startswith(DATA_PREFIX):
        raise ReportError(f"{path}: does not start with {DATA_PREFIX.strip()!r}; not a scstn-vcn report's data")
    try:
        data = json.loads(text[len(DATA_PREFIX) :].rstrip().rstrip(";"))
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: its data is not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != FORMAT_VERSION:
        raise ReportError(f"{path}: expected {FORMAT} version {FORMAT_VERSION} data")
    return data


def check_folder(folder):
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ReportError(f"report folder {folder}: exists and is not a folder")
    index = os.path.join(folder, "index.html")
    if os.path.isfile(index):
        with open(index, encoding="utf-8", errors="replace") as handle:
            if f'content="{GENERATOR}"' not in handle.read(2000):
                raise ReportError(
                    f"report folder {folder}: holds an index.html that scstn-vcn did not write; "
                    "choose another folder (a report never overwrites other files)"
                )


def _split(items):
    return {
        "pid": [int(it[1]) for it in items],
        "cam": [int(it[2]) for it in items],
        "name": [os.path.basename(str(it[0])) for it in items],
        "digest": items_digest(items),
        "count": len(items),
    }


def _alignment(run, query_items, gallery_items):
    """{"row", "query": [aligned query thumbnail], "qbox", "match": [gallery index], "gallery", "gbox"} and
    the (path, theta) jobs, or (None, []) when the run has no theta or no spatial row."""
    if run.query_theta is None or run.gallery_theta is None or ALIGN_ROW not in run.results:
        return None, []
    records = run.results[ALIGN_ROW]["per_query"]
    kept = records.code != 0
    has = kept.any(axis=1)
    match = np.where(has, records.top[np.arange(len(has)), kept.argmax(axis=1)], -1)
    qtheta = np.asarray(run.query_theta, dtype=np.float32)
    gtheta = np.asarray(run.gallery_theta, dtype=np.float32)
    align = {"row": ALIGN_ROW, "query": [], "qbox": [], "match": match.tolist(), "gallery": [], "gbox": []}
    jobs = []
    for q, item in enumerate(query_items):
        align["query"].append(thumbnails.thumbnail_name(item[0], qtheta[q]))
        align["qbox"].append(thumbnails.crop_box(qtheta[q]))
        jobs.append((item[0], qtheta[q]))
        g = int(match[q])
        if g >= 0:
            align["gallery"].append(thumbnails.thumbnail_name(gallery_items[g][0], gtheta[g]))
            align["gbox"].append(thumbnails.crop_box(gtheta[g]))
            jobs.append((gallery_items[g][0], gtheta[g]))
        else:
            align["gallery"].append("")
            align["gbox"].append(None)
    return align, jobs


def _shown_gallery(runs):
    shown = set()
    for run in runs:
        for rec in run["per_query"].values():
            shown.update(g for row in rec["top"] for g in row)
            shown.update(g for g in rec["first"] if g >= 0)
        if run.get("align"):
            shown.update(g for g in run["align"]["match"] if g >= 0)
    return shown


def write_report(folder, runs, query_items, gallery_items, *, title=None, workers=None):
    """Write the report of `runs` (one ReportRun, or two to compare: ReportRun or LoadedRun) on the data
    set split `query_items` / `gallery_items` ((path, pid, camid) lists, in the evaluation's order) into
    `folder`. Returns the path of index.html."""
    if not 1 <= len(runs) <= 2:
        raise ReportError(f"a report shows one model or compares two, got {len(runs)} runs")
    folder = os.path.abspath(folder)
    check_folder(folder)
    query_items, gallery_items = list(query_items), list(gallery_items)
    query, gallery = _split(query_items), _split(gallery_items)
    data_runs, jobs, copies = [], [], []
    for index, run in enumerate(runs):
        default_short = "AB"[index] if len(runs) > 1 else "model"
        if isinstance(run, LoadedRun):
            loaded = run.data
            for split, mine in (("query", query), ("gallery", gallery)):
                if loaded[split]["digest"] != mine["digest"]:
                    raise ReportError(
                        f"report {run.folder}: its {split} split ({loaded[split]['count']} images) is not this "
                        f"evaluation's ({mine['count']} images); a comparison needs the same data"
                    )
            entry = dict(loaded["runs"][0])
            entry["short"] = default_short if entry.get("short") in (None, "model") else entry["short"]
            if entry.get("align"):
                names = entry["align"]["query"] + [n for n in entry["align"]["gallery"] if n]
                copies += [(os.path.join(run.folder, thumbnails.FOLDER, n), n) for n in names]
            data_runs.append(entry)
            continue
        entry = run_data(run.label, run.payload, run.results, query_items, gallery_items, run.info)
        entry["short"] = run.short or default_short
        entry["align"], run_jobs = _alignment(run, query_items, gallery_items)
        jobs += run_jobs
        data_runs.append(entry)

    shown = _shown_gallery(data_runs)
    paths = [it[0] for it in query_items] + [gallery_items[g][0] for g in sorted(shown)]
    os.makedirs(folder, exist_ok=True)
    thumbnails.write_thumbnails(folder, paths, jobs, workers=workers)
    thumb_folder = os.path.join(folder, thumbnails.FOLDER)
    for source, name in copies:
        target = os.path.join(thumb_folder, name)
        if not os.path.exists(target):
            if not os.path.isfile(source):
                raise ReportError(f"report: {source} is missing (the compared report's alignment image)")
            with open(source, "rb") as src:
                atomic_write(target, lambda handle, src=src: shutil.copyfileobj(src, handle))
    query["thumb"] = [thumbnails.thumbnail_name(p) for p in (it[0] for it in query_items)]
    gallery["thumb"] = [
        thumbnails.thumbnail_name(gallery_items[g][0]) if g in shown else "" for g in range(len(gallery_items))
    ]
    topk = max(len(r["top"][0]) if r["top"] else 0 for run in data_runs for r in run["per_query"].values())
    data = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "topk": topk,
        "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "generator": f"scstn-vcn {__version__}",
        "query": query,
        "gallery": gallery,
        "runs": data_runs,
    }
    text = DATA_PREFIX + json.dumps(data, separators=(",", ":"), allow_nan=False) + ";\n"
    atomic_write(os.path.join(folder, DATA_FILE), lambda handle: handle.write(text.encode("utf-8")))
    for name in ASSETS:
        with open(os.path.join(ASSET_DIR, name), "rb") as handle:
            content = handle.read()
        atomic_write(os.path.join(folder, name), lambda handle, content=content: handle.write(content))
    title = title or ("Evaluation report" if len(data_runs) == 1 else "Evaluation report: two models compared")
    subtitle = (
        f"{len(query_items)} queries, {len(gallery_items)} gallery images · top {topk} of each ranked list · "
        f"written {data['written']} by {data['generator']}"
    )
    page = render_page(data, title, subtitle)
    index = os.path.join(folder, "index.html")
    atomic_write(index, lambda handle: handle.write(page.encode("utf-8")))
    return index
