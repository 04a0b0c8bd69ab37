"""Evaluation: query/gallery features -> scstn_vcn.metrics.evaluate_features -> table and JSON."""

import json
import os

import torch

from scstn_vcn.engine.features import extract_features

METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")
HEADERS = {"rank1": "rank-1", "rank5": "rank-5", "rank10": "rank-10", "mAP": "mAP", "mINP": "mINP"}


def extract_query_gallery(model, dataset, config, device, amp="off"):
    from scstn_vcn.data import build_eval_loaders

    query_loader, gallery_loader = build_eval_loaders(
        dataset,
        config["data"]["height"],
        config["data"]["width"],
        config["eval"]["batch_size"],
        config["eval"]["workers"],
    )
    return (
        extract_features(model, query_loader, device, amp),
        extract_features(model, gallery_loader, device, amp),
    )


def evaluate_model(model, dataset, config, device, amp="off"):
    """{branch: {metric: value}} for global / spatial / fusion, plus the extracted features."""
    from scstn_vcn.metrics import evaluate_features

    query, gallery = extract_query_gallery(model, dataset, config, device, amp)
    names = [n for n in ("global", "spatial") if n in query["feats"]]
    kwargs = {"chunk_size": int(config["eval"]["chunk_size"]), "device": device}
    # Fusion needs both branches; a global-only ablation reports its one branch.
    kwargs["fusion"] = tuple(names) if len(names) > 1 else None
    results = evaluate_features(
        {n: query["feats"][n] for n in names},
        {n: gallery["feats"][n] for n in names},
        query["pids"], gallery["pids"], query["camids"], gallery["camids"],
        **kwargs,
    )
    return results, query, gallery


def to_percent(results):
    """The scalar metrics (fractions in [0, 1] from scstn_vcn.metrics) as percentages, 2 decimals;
    the CMC arrays are left out."""
    out = {}
    for branch, values in results.items():
        out[branch] = {}
        for metric in METRICS:
            if metric in values:
                value = values[metric]
                value = float(value.item() if isinstance(value, torch.Tensor) else value)
                out[branch][metric] = round(100.0 * value, 2)
    return out


def format_table(results, metrics=METRICS):
    """A plain-text table: one row per branch (global / spatial / fusion), one column per metric."""
    pct = to_percent(results)
    order = [b for b in ("global", "spatial", "fusion") if b in pct] + [b for b in pct if b not in ("global", "spatial", "fusion")]
    cols = [m for m in metrics if any(m in pct[b] for b in order)]
    lines = ["branch   " + "".join(f"{HEADERS.get(m, m):>9}" for m in cols)]
    lines.append("-" * len(lines[0]))
    for branch in order:
        lines.append(f"{branch:<9}" + "".join(f"{pct[branch].get(m, float('nan')):>9.2f}" for m in cols))
    return "\n".join(lines)


def write_results(path, results, extra=None):
    payload = {"results": to_percent(results), "units": "percent"}
    if extra:
        payload.update(extra)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2)
    os.replace(tmp, path)
    return payload
