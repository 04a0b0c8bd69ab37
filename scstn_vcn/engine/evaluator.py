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


class EvalResults(dict):
    """{row: {metric: value}}, with ``settings``: how the rows were made (re-ranking, query expansion),
    which write_results records beside them."""

    def __init__(self, rows, settings):
        super().__init__(rows)
        self.settings = settings


def eval_settings(config):
    """The re-ranking and query-expansion settings of the config's eval section: {"rerank": {k1, k2,
    lambda_value} or None, "query_expansion": {qe_k, alpha, qe_times} or None}."""
    section = config["eval"]
    rerank = qe = None
    if section["rerank"]:
        rerank = {
            "k1": int(section["rerank_k1"]),
            "k2": int(section["rerank_k2"]),
            "lambda_value": float(section["rerank_lambda"]),
        }
    if section["query_expansion"]:
        qe = {"qe_k": int(section["qe_k"]), "alpha": float(section["qe_alpha"]), "qe_times": int(section["qe_times"])}
    return {"rerank": rerank, "query_expansion": qe}


def evaluate_model(model, dataset, config, device, amp="off"):
    """{row: {metric: value}} for global / spatial / fusion (and, as eval.rerank / eval.query_expansion
    ask, their "+rk" / "+qe" / "+qe+rk" rows), plus the extracted features."""
    from scstn_vcn.metrics import QueryExpansionConfig, RerankConfig, evaluate_features

    query, gallery = extract_query_gallery(model, dataset, config, device, amp)
    names = [n for n in ("global", "spatial") if n in query["feats"]]
    settings = eval_settings(config)
    kwargs = {"chunk_size": int(config["eval"]["chunk_size"]), "device": device}
    # Fusion needs both branches; a global-only ablation reports its one branch.
    kwargs["fusion"] = tuple(names) if len(names) > 1 else None
    if settings["rerank"]:
        kwargs["rerank"] = RerankConfig(**settings["rerank"])
    if settings["query_expansion"]:
        kwargs["query_expansion"] = QueryExpansionConfig(**settings["query_expansion"])
    results = evaluate_features(
        {n: query["feats"][n] for n in names},
        {n: gallery["feats"][n] for n in names},
        query["pids"],
        gallery["pids"],
        query["camids"],
        gallery["camids"],
        **kwargs,
    )
    return EvalResults(results, settings), query, gallery


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


def _row_order(names):
    """global, spatial, fusion first, each followed by its variants ("global+rk", "global+qe", ...) in the
    order they came, then any other rows."""
    base = [b for b in ("global", "spatial", "fusion") if b in names]
    order = []
    for b in base:
        order += [b] + [n for n in names if n.startswith(b + "+")]
    return order + [n for n in names if n not in order]


def format_table(results, metrics=METRICS):
    """A plain-text table: one row per branch (global / spatial / fusion), each beside its re-ranked /
    query-expanded rows ("global+rk", ...), one column per metric."""
    pct = to_percent(results)
    order = _row_order(list(pct))
    cols = [m for m in metrics if any(m in pct[b] for b in order)]
    width = max([9] + [len(b) + 2 for b in order])
    lines = ["branch".ljust(width) + "".join(f"{HEADERS.get(m, m):>9}" for m in cols)]
    lines.append("-" * len(lines[0]))
    for branch in order:
        lines.append(f"{branch:<{width}}" + "".join(f"{pct[branch].get(m, float('nan')):>9.2f}" for m in cols))
    return "\n".join(lines)


def write_results(path, results, extra=None):
    """results.json: the metrics in percent, the evaluation's settings (re-ranking, query expansion; when
    ``results`` came from evaluate_model) and ``extra``; written atomically."""
    payload = {"results": to_percent(results), "units": "percent"}
    settings = getattr(results, "settings", None)
    if settings is not None:
        payload["eval_settings"] = settings
    if extra:
        payload.update(extra)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2)
    os.replace(tmp, path)
    return payload
