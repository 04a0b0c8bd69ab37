"""The report's data: an evaluation's rows (results.json's numbers, the CMC curves and each row's per-query
records) turned into the plain JSON the page reads, and the per-camera-pair rank-1 matrix.

Nothing is recomputed differently from the evaluation: the summary numbers are results.json's (the payload
write_results returned), the per-query AP / first-match rank / top k are the PerQueryRecords the
streaming evaluation filled from the sorted rows it ranked, and the camera matrix counts those records.
Percentages are rounded to 2 decimals as results.json rounds them (engine.evaluator.to_percent).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from scstn_vcn.engine.evaluator import METRICS, _row_order


class ReportError(ValueError):
    """Input the report cannot be written from; the message names what is wrong."""


def percent(value):
    """A fraction as results.json writes it (percent, 2 decimals); None for NaN (a query without a match)."""
    value = float(value)
    return None if value != value else round(100.0 * value, 2)


def items_digest(items):
    """sha256 of the (file name, identity, camera) of a split: two evaluations are of the same data when
    their query and gallery digests agree (file names, not paths: a report may move to another machine)."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{os.path.basename(str(item[0]))}\0{int(item[1])}\0{int(item[2])}\n".encode())
    return digest.hexdigest()


def row_order(results):
    return _row_order(list(results))


def summary_columns(payload_results):
    """The metric columns of results.json's rows: the standard ones first, then any other metric in the
    order the rows list them (TPR@FPR ...)."""
    seen = []
    for values in payload_results.values():
        seen += [m for m in values if m not in seen]
    return [m for m in METRICS if m in seen] + [m for m in seen if m not in METRICS]


def cmc_percent(results, max_rank=50):
    """{row: [CMC(1) .. CMC(max_rank)] in percent}."""
    return {row: [percent(v) for v in np.asarray(results[row]["cmc"])[:max_rank]] for row in row_order(results)}


def camera_matrix(records, q_cams, g_cams):
    """Rank-1 by query camera x gallery camera of the first match: {"qcams", "gcams", "hits", "counts"}
    with counts[i][j] valid queries of camera qcams[i] whose first match is in camera gcams[j], hits[i][j]
    those whose first match is at rank 1. Summed over the matrix, hits / counts is the row's rank-1."""
    valid = records.valid
    qc = np.asarray(q_cams)[valid]
    gc = np.asarray(g_cams)[records.first_index[valid]]
    hit = records.first_rank[valid] == 1
    qcams = sorted({int(c) for c in qc})
    gcams = sorted({int(c) for c in gc})
    qi = np.searchsorted(qcams, qc)
    gi = np.searchsorted(gcams, gc)
    counts = np.zeros((len(qcams), len(gcams)), dtype=np.int64)
    hits = np.zeros_like(counts)
    np.add.at(counts, (qi, gi), 1)
    np.add.at(hits, (qi, gi), hit.astype(np.int64))
    return {"qcams": qcams, "gcams": gcams, "hits": hits.tolist(), "counts": counts.tolist()}


def row_records(records, g_cams, q_cams):
    """One row's per-query records as columns of plain lists (what report.js reads)."""
    return {
        "ap": [percent(v) for v in records.ap],
        "inp": [percent(v) for v in records.inp],
        "rank": records.first_rank.tolist(),
        "first": records.first_index.tolist(),
        "top": records.top.tolist(),
        # one digit per item: 0 discarded (junk / same camera), 1 non-match, 2 match
        "code": ["".join(map(str, row)) for row in records.code.tolist()],
        "dist": np.round(records.dist.astype(np.float64), 4).tolist(),
        "cams": camera_matrix(records, q_cams, g_cams),
    }


def check_results(results, num_query, label):
    """The evaluation rows must carry per-query records for every query (evaluate with record_topk)."""
    if not results:
        raise ReportError(f"{label}: no evaluation rows to report")
    for row, values in results.items():
        records = values.get("per_query")
        if records is None:
            raise ReportError(
                f"{label}: row {row!r} has no per-query records; evaluate with record_topk "
                "(evaluate_features(..., record_topk=K), or eval.report set for evaluate_model)"
            )
        if records.ap.shape[0] != num_query:
            raise ReportError(
                f"{label}: row {row!r} has records of {records.ap.shape[0]} queries, the data set {num_query}"
            )


def run_data(label, payload, results, query_items, gallery_items, info=None):
    """The page's data of one evaluated model: its label, results.json's payload (summary, settings and
    what the run recorded), the CMC curves and every row's per-query records."""
    check_results(results, len(query_items), label)
    q_cams = [int(it[2]) for it in query_items]
    g_cams = [int(it[2]) for it in gallery_items]
    order = row_order(results)
    missing = [row for row in order if row not in payload.get("results", {})]
    if missing:
        raise ReportError(f"{label}: rows {missing} are evaluated but not in the results payload")
    recorded = {k: v for k, v in payload.items() if k not in ("results", "units", "eval_settings")}
    return {
        "label": label,
        "rows": order,
        "summary": {row: payload["results"][row] for row in order},
        "columns": summary_columns({row: payload["results"][row] for row in order}),
        "settings": payload.get("eval_settings"),
        "recorded": recorded,
        "info": info or {},
        "cmc": cmc_percent(results),
        "num_valid": {row: int(results[row]["num_valid_queries"]) for row in order},
        "per_query": {row: row_records(results[row]["per_query"], g_cams, q_cams) for row in order},
    }
