"""Evaluation: query/gallery features -> scstn_vcn.metrics.evaluate_features -> table and JSON."""

import json
import os
import time

import torch

from scstn_vcn.engine.features import extract_features
from scstn_vcn.engine.open_set import verification_section

METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")
HEADERS = {"rank1": "rank-1", "rank5": "rank-5", "rank10": "rank-10", "mAP": "mAP", "mINP": "mINP"}


def extract_query_gallery(model, dataset, config, device, amp="off", with_theta=False):
    from scstn_vcn.data import build_eval_loaders

    query_loader, gallery_loader = build_eval_loaders(
        dataset,
        config["data"]["height"],
        config["data"]["width"],
        config["eval"]["batch_size"],
        config["eval"]["workers"],
    )
    return (
        extract_features(model, query_loader, device, amp, with_theta=with_theta),
        extract_features(model, gallery_loader, device, amp, with_theta=with_theta),
    )


class EvalResults(dict):
    """{row: {metric: value}}, with ``settings``: how the rows were made (re-ranking, query expansion),
    and ``queries``: {"valid": N, "total": M}, how many queries had a valid match (the metrics average
    over those), which write_results records beside them."""

    def __init__(self, rows, settings, queries=None):
        super().__init__(rows)
        self.settings = settings
        self.queries = queries


def _no_valid_query(dataset, q_pids, g_pids, q_camids, g_camids):
    """The error for a data set where no query has a valid match, saying which of the reasons it is."""
    where = f"{dataset.name} at {dataset.root}: no query has a valid match in the gallery ({len(q_pids)} queries)"
    if not set(q_pids) & set(g_pids):
        return ValueError(f"{where}: no query identity appears in the gallery; check the query and gallery ids")
    cameras = set(q_camids) | set(g_camids)
    if len(cameras) == 1:
        return ValueError(
            f"{where}: every image is from the one camera {cameras.pop()}, and the protocol discards a query's "
            "gallery images of its own identity and camera; give the images their cameras (a manifest's camid "
            "column, c<digits> in the file names), or leave the camera out of the names in the folder layout, "
            "which makes each image a camera of its own"
        )
    return ValueError(
        f"{where}: each query's identity is in the gallery only under the query's own camera, and the protocol "
        "discards those images"
    )


def query_counts(dataset):
    """{"valid": N, "total": M} of the data set's queries (scstn_vcn.metrics.valid_query_mask); a
    ValueError saying why when no query is valid, before any feature is computed."""
    from scstn_vcn.metrics import valid_query_mask

    dataset.require(["query", "gallery"], "evaluation")
    ids = [[getattr(it, f) for it in items] for f in ("pid", "camid") for items in (dataset.query, dataset.gallery)]
    q_pids, g_pids, q_camids, g_camids = ids
    valid = int(valid_query_mask(q_pids, g_pids, q_camids, g_camids).sum())
    if valid == 0:
        raise _no_valid_query(dataset, q_pids, g_pids, q_camids, g_camids)
    return {"valid": valid, "total": len(q_pids)}


def queries_line(queries):
    """ "valid queries: 3,360 of 3,368" (the metrics average over the valid ones)."""
    return f"valid queries: {queries['valid']:,} of {queries['total']:,}"


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
    out = {"rerank": rerank, "query_expansion": qe}
    if rerank and section.get("rerank_neighbours", "auto") != "auto":
        # an explicit choice of re-ranking's neighbour backend (scstn_vcn.metrics.neighbours) is recorded;
        # record_neighbours adds what was used and measured
        out["neighbours"] = _neighbour_settings(section)
    return out


def _neighbour_settings(section):
    out = {
        "backend": section.get("rerank_neighbours", "auto"),
        "nprobe": int(section.get("rerank_nprobe", 32)),
        "codes": section.get("rerank_codes", "SQ8"),
    }
    if out["backend"] == "faiss":
        out.update(factory=section.get("rerank_faiss_index"), params=section.get("rerank_faiss_params"))
    return out


def neighbour_search(config):
    """The NeighbourSearch of the config's eval.rerank_neighbours / rerank_nprobe / rerank_codes /
    rerank_faiss_index / rerank_faiss_params."""
    from scstn_vcn.metrics.neighbours import NeighbourSearch

    return NeighbourSearch(**_neighbour_settings(config["eval"]))


def record_neighbours(settings, results):
    """Add to ``settings`` how the "+rk" rows found their neighbours, when it was asked for explicitly or was
    not the exact pass: the backend used, its parameters, time and measured recall, per row."""
    used = {row: v["neighbours"] for row, v in results.items() if "neighbours" in v}
    if "neighbours" in settings or any(r.get("backend") != "exact" for r in used.values()):
        settings.setdefault("neighbours", {})["measured"] = used


def evaluate_model(model, dataset, config, device, amp="off"):
    """{row: {metric: value}} for global / spatial / fusion (and, as eval.rerank / eval.query_expansion
    ask, their "+rk" / "+qe" / "+qe+rk" rows), plus the extracted features. With eval.report set (an
    evaluation report is wanted, scstn_vcn.report) every row also holds "per_query" (each query's AP,
    first-match rank and top eval.report_topk) and the features their SC-STN "theta"."""
    from scstn_vcn.metrics import QueryExpansionConfig, RerankConfig, evaluate_features

    queries = query_counts(dataset)
    report = bool(config["eval"].get("report"))
    query, gallery = extract_query_gallery(model, dataset, config, device, amp, with_theta=report)
    names = [n for n in ("global", "spatial") if n in query["feats"]]
    settings = eval_settings(config)
    kwargs = {"chunk_size": int(config["eval"]["chunk_size"]), "device": device}
    # Fusion needs both branches; a global-only ablation reports its one branch.
    kwargs["fusion"] = tuple(names) if len(names) > 1 else None
    if settings["rerank"]:
        kwargs["rerank"] = RerankConfig(**settings["rerank"])
        kwargs["neighbours"] = neighbour_search(config)
    if settings["query_expansion"]:
        kwargs["query_expansion"] = QueryExpansionConfig(**settings["query_expansion"])
    if report:
        kwargs["record_topk"] = int(config["eval"]["report_topk"])
    kwargs["fprs"] = tuple(config["eval"]["fprs"])  # TPR@FPR and thresholds (scstn_vcn.metrics.verification)
    results = evaluate_features(
        {n: query["feats"][n] for n in names},
        {n: gallery["feats"][n] for n in names},
        query["pids"],
        gallery["pids"],
        query["camids"],
        gallery["camids"],
        **kwargs,
    )
    record_neighbours(settings, results)
    results = EvalResults(results, settings, queries)
    if report:
        # The report draws each image's SC-STN alignment from these (None without a spatial branch).
        results.thetas = (query.get("theta"), gallery.get("theta"))
    return results, query, gallery


def evaluate_targets(model, targets, config, device, amp="off", say=print):
    """Evaluate on each EvalTarget (scstn_vcn.engine.builders) in turn, printing a line and a table per
    target through `say`; returns [(target, EvalResults)]."""
    out = []
    for number, target in enumerate(targets, 1):
        start = time.perf_counter()
        results, query, gallery = evaluate_model(model, target.dataset, config, device, amp)
        # By the training split's fingerprint: the same training images in another layout are the same set.
        seen = {True: "one of the training sets", False: "not one of the training sets"}.get(
            target.trained_on, f"a {target.name} set is among the training sets, the model does not record which"
        )
        say(
            f"target {number}/{len(targets)}: {target.label} ({seen}): {len(query['pids']):,} queries, "
            f"{len(gallery['pids']):,} gallery images, {queries_line(results.queries)} "
            f"({time.perf_counter() - start:.1f}s)"
        )
        say(format_table(results))
        out.append((target, results))
    return out


def target_records(evaluated):
    """results.json's "targets": one entry per evaluated target, with its table in percent."""
    return [
        {
            "dataset": target.name,
            "data_root": os.path.abspath(target.root),
            "trained_on": target.trained_on,
            "queries": results.queries,
            "results": to_percent(results),
            "verification": verification_section(results),
        }
        for target, results in evaluated
    ]


def to_percent(results):
    """The scalar metrics (fractions in [0, 1] from scstn_vcn.metrics) as percentages, 2 decimals;
    the CMC arrays are left out."""
    out = {}
    for branch, values in results.items():
        out[branch] = {}
        for metric in METRICS + _tpr_columns([values]):
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


def _tpr_columns(rows):
    """The "TPR@FPR=..." keys of the rows (scstn_vcn.metrics.verification), by ascending FPR."""
    keys = {key for row in rows for key in row if key.startswith("TPR@FPR=")}
    return tuple(sorted(keys, key=lambda key: float(key.split("=", 1)[1])))


def format_table(results, metrics=None):
    """A plain-text table: one row per branch (global / spatial / fusion), each beside its re-ranked /
    query-expanded rows ("global+rk", ...), one column per metric (default: METRICS and the rows'
    TPR@FPR columns)."""
    pct = to_percent(results)
    order = _row_order(list(pct))
    if metrics is None:
        metrics = METRICS + _tpr_columns(pct.values())
    cols = [m for m in metrics if any(m in pct[b] for b in order)]
    width = max([9] + [len(b) + 2 for b in order])
    headers = [HEADERS.get(m, m.replace("TPR@FPR=", "TPR@")) for m in cols]
    lines = ["branch".ljust(width) + "".join(f"{h:>9}" for h in headers)]
    lines.append("-" * len(lines[0]))
    for branch in order:
        lines.append(f"{branch:<{width}}" + "".join(f"{pct[branch].get(m, float('nan')):>9.2f}" for m in cols))
    queries = getattr(results, "queries", None)
    if queries and queries["valid"] < queries["total"]:
        lines.append(f"({queries_line(queries)}: the others have no match in the gallery from another camera)")
    return "\n".join(lines)


def write_results(path, results, extra=None):
    """results.json: the metrics in percent, the evaluation's settings (re-ranking, query expansion; when
    ``results`` came from evaluate_model) and ``extra``; written atomically."""
    payload = {"results": to_percent(results), "units": "percent"}
    settings = getattr(results, "settings", None)
    if settings is not None:
        payload["eval_settings"] = settings
    if getattr(results, "queries", None) is not None:
        payload["queries"] = results.queries
    verification = verification_section(results)  # TPR@FPR's points, thresholds and ROC curves
    if verification is not None:
        payload["verification"] = verification
    if extra:
        payload.update(extra)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2)
    os.replace(tmp, path)
    return payload
