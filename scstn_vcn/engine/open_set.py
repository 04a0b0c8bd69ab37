"""Open-set answers: the verification part of results.json, and the distance threshold a model carries.

results.json's "verification" (written by write_results from evaluate_features' rows):

    {"definition": "...",
     "rows": {"fusion": {"num_positive_pairs": P, "num_negative_pairs": N,
                         "points": [{"target_fpr": 0.001, "fpr": ..., "tpr": ..., "threshold": ...}, ...],
                         "roc": {"fpr": [...], "tpr": [...], "threshold": [...]}},
              "global": ..., "fusion+rk": ...}}

A threshold of null (JSON has no -inf) accepts nothing: even the closest pair would exceed the target FPR.

A threshold record (a model file's "threshold" metadata, FeatureExtractor.threshold):

    {"distance": "fusion" | "global" | "spatial",   the distance it applies to, as `search` and
                                                    FeatureExtractor.distance compute it
     "value": D,                                    same person when distance <= D
     "target_fpr", "fpr", "tpr": where it came from (an evaluation's ROC point; absent for a hand-set D),
     "data": the data set it was measured on}
"""

import json
import math
import os

DEFINITION = (
    "pairs: every (query, gallery) pair the ranking protocol keeps (junk identity -1 and the query's identity "
    "under the query's camera left out); positive: same identity; same person when distance <= threshold; at "
    "each target FPR the ROC point with the largest FPR <= target, of those the largest TPR (scikit-learn "
    "roc_curve's point); threshold null: nothing is accepted"
)
DISTANCES = ("fusion", "global", "spatial")
RECORD_KEYS = ("distance", "value", "target_fpr", "fpr", "tpr", "data")


class ThresholdError(ValueError):
    """A threshold that cannot be used or read; the message names where it came from."""


def _finite_or_none(value):
    value = float(value)
    return value if math.isfinite(value) else None


def verification_section(results):
    """results.json's "verification" for evaluation rows that hold one (evaluate_features' "verification"
    key), or None when none does."""
    rows = {}
    for name, row in results.items():
        result = row.get("verification") if isinstance(row, dict) else None
        if result is None:
            continue
        rows[name] = {
            "num_positive_pairs": int(result["num_positive_pairs"]),
            "num_negative_pairs": int(result["num_negative_pairs"]),
            "points": [
                {
                    "target_fpr": float(p["target_fpr"]),
                    "fpr": _finite_or_none(p["fpr"]),
                    "tpr": _finite_or_none(p["tpr"]),
                    "threshold": _finite_or_none(p["threshold"]),
                }
                for p in result["points"]
            ],
            "roc": {key: [_finite_or_none(v) for v in result["roc"][key]] for key in ("fpr", "tpr", "threshold")},
        }
    return {"definition": DEFINITION, "rows": rows} if rows else None


def read_verification(path):
    """(rows of results.json's "verification", the file's "dataset" or None); ThresholdError names the
    file and what is missing."""
    try:
        with open(path) as handle:
            payload = json.load(handle)
    except FileNotFoundError:
        raise ThresholdError(
            f"results file {path}: no such file (expected the results.json of `scstn-vcn eval`)"
        ) from None
    except (OSError, ValueError) as error:
        raise ThresholdError(f"results file {path}: not readable JSON ({error})") from None
    section = payload.get("verification") if isinstance(payload, dict) else None
    rows = section.get("rows") if isinstance(section, dict) else None
    if not isinstance(rows, dict) or not rows:
        raise ThresholdError(
            f"results file {path}: has no 'verification' rows; it was written without TPR@FPR (eval.fprs "
            f"empty, or by an older scstn-vcn): run `scstn-vcn eval` again"
        )
    for name, row in rows.items():
        points = row.get("points") if isinstance(row, dict) else None
        roc = row.get("roc") if isinstance(row, dict) else None
        if not isinstance(points, list) or not isinstance(roc, dict):
            raise ThresholdError(f"results file {path}: verification row {name!r} has no 'points' list and 'roc'")
        for point in points:
            if not isinstance(point, dict) or not all(k in point for k in ("target_fpr", "fpr", "tpr", "threshold")):
                raise ThresholdError(
                    f"results file {path}: verification row {name!r} has a point {point!r}; expected "
                    f"target_fpr, fpr, tpr and threshold"
                )
    data = payload.get("dataset")
    return rows, data if isinstance(data, str) else None


def _same_fpr(a, b):
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)


def threshold_from_results(path, fpr, distance="fusion"):
    """The threshold record of `distance`'s row of results.json at the target FPR `fpr` (one of eval.fprs)."""
    if distance not in DISTANCES:
        raise ThresholdError(
            f"{distance!r}: a threshold applies to a plain distance ({', '.join(DISTANCES)}); a re-ranked or "
            f"query-expanded row's distances depend on the whole evaluated set, so no single pair can be compared"
        )
    rows, data = read_verification(path)
    if distance not in rows:
        raise ThresholdError(
            f"results file {path}: has no {distance!r} row (it has {', '.join(sorted(rows))}); the model's "
            f"distance must have been evaluated"
        )
    points = rows[distance]["points"]
    matches = [p for p in points if _same_fpr(p["target_fpr"], fpr)]
    if not matches:
        have = ", ".join(f"{p['target_fpr']:g}" for p in points)
        raise ThresholdError(
            f"results file {path}: no threshold at FPR {fpr:g} for {distance!r} (it has {have}); evaluate "
            f"with --set eval.fprs=[{fpr:g}] to get it"
        )
    point = matches[0]
    if point["threshold"] is None:
        raise ThresholdError(
            f"results file {path}: at FPR {fpr:g} the {distance!r} threshold accepts nothing (even the closest "
            f"pair exceeds that false positive rate on this data, {rows[distance]['num_negative_pairs']:,} "
            f"negative pairs); choose a larger FPR"
        )
    record = {
        "distance": distance,
        "value": float(point["threshold"]),
        "target_fpr": float(point["target_fpr"]),
        "fpr": point["fpr"],
        "tpr": point["tpr"],
    }
    if data:
        record["data"] = data
    return check_threshold_record(record, f"results file {path}")


def manual_threshold(value, distance="fusion"):
    """The record of a threshold set by hand (no ROC point behind it)."""
    return check_threshold_record({"distance": distance, "value": value}, "--threshold")


def check_threshold_record(record, where):
    """`record` checked (see the module docstring); ThresholdError says what is wrong and `where` it is."""
    if not isinstance(record, dict):
        raise ThresholdError(f"{where}: the threshold is a {type(record).__name__}, expected a JSON object")
    unknown = sorted(set(record) - set(RECORD_KEYS))
    if unknown:
        raise ThresholdError(f"{where}: the threshold has unknown entries {unknown}; expected {list(RECORD_KEYS)}")
    if record.get("distance") not in DISTANCES:
        raise ThresholdError(
            f"{where}: the threshold's distance is {record.get('distance')!r}, expected one of {list(DISTANCES)}"
        )
    value = record.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ThresholdError(f"{where}: the threshold value is {value!r}, expected a finite number")
    for key in ("target_fpr", "fpr", "tpr"):
        rate = record.get(key)
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1):
            raise ThresholdError(f"{where}: the threshold's {key} is {rate!r}, expected a number in [0, 1] or null")
    if record.get("data") is not None and not isinstance(record["data"], str):
        raise ThresholdError(f"{where}: the threshold's data is {record['data']!r}, expected a string")
    return {key: record[key] for key in RECORD_KEYS if key in record} | {"value": float(value)}


def parse_threshold_metadata(text, where):
    """A model file's "threshold" metadata (JSON text) as a checked record."""
    try:
        record = json.loads(text)
    except ValueError as error:
        raise ThresholdError(f"{where}: its 'threshold' metadata is not valid JSON ({error})") from None
    return check_threshold_record(record, where)


def describe_threshold(record):
    """One line: "fusion distance <= 0.8123 (TPR 91.20% at FPR 0.10% on market1501)"."""
    text = f"{record['distance']} distance <= {record['value']:.4f}"
    measured = []
    if record.get("tpr") is not None and record.get("fpr") is not None:
        measured.append(f"TPR {100 * record['tpr']:.2f}% at FPR {100 * record['fpr']:.3g}%")
    if record.get("data"):
        measured.append(f"on {record['data']}")
    return text + (f" ({' '.join(measured)})" if measured else " (set by hand)")


def model_distance(feature_names):
    """The distance `search` and FeatureExtractor.distance rank by for a model with these branches."""
    return "fusion" if len(feature_names) > 1 else feature_names[0]


def default_results_path(checkpoint):
    """results.json beside a checkpoint (where `scstn-vcn eval` writes it by default)."""
    return os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "results.json")
