"""The report of benchmarks/gpu_check.sh: one JSON and one Markdown table from what its steps wrote.

Reads, in the run's work folder: env.json (gpu_check_env.py), ops.json (gpu_check_ops.py, a
pytest-benchmark JSON), train.json (gpu_check_train.py), eval.json and eval_rerank.json (gpu_check_eval.py), tests.xml
(pytest's JUnit XML) and steps.tsv (the script's step log: name, status, seconds, detail). A missing
file is a step that did not run; the report says so. Writes:

  OUT.json  the ops' pytest-benchmark JSON, plus a "gpu_check" key: mode, environment, steps, tests,
            train step, evaluation, and every goal with its figure and whether it was met;
  OUT.md    one table: every figure beside its goal, with a pass/fail column.

Standard library only (no torch), so it runs in a second even after a step broke the environment.
"""

import argparse
import datetime
import json
import os
import sys
import xml.etree.ElementTree as ET

FUSED = ("triton", "native")
EVAL_MAX_S = 20.0
EVAL_MAX_BYTES = 4e9
TRAIN_MIN_SPEEDUP = 1.05
# op -> [(figure key in extra_info, at least, label)] for forward + backward of the fused backends
OP_GOALS = {
    "affine_hpool": [
        ("speedup_vs_eager", 6.0, "≥ 6× eager"),
        ("speedup_vs_compile", 2.0, "≥ 2× torch.compile"),
        ("floor_pct", 80.0, "≥ 80% of floor"),
    ],
    "channel_pool": [("speedup_vs_eager", 3.0, "≥ 3× eager")],
    "vertical_proj": [("speedup_vs_eager", 3.0, "≥ 3× eager")],
}


def _load(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return {"unreadable": f"{path}: {error}"}


def _steps(path):
    steps = []
    if os.path.exists(path):
        with open(path) as handle:
            for line in handle:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 3:
                    steps.append(
                        {
                            "step": parts[0],
                            "status": parts[1],
                            "seconds": float(parts[2] or 0),
                            "detail": parts[3] if len(parts) > 3 else "",
                        }
                    )
    return steps


def _tests(path):
    """Totals of a JUnit XML file (pytest --junitxml), or None."""
    if not os.path.exists(path):
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        return {"unreadable": str(error)}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    totals = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    totals["passed"] = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
    failed = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
    totals["failed_tests"] = failed
    return totals


def _goal(item, figure, threshold, label, value, higher_is_better=True):
    if value is None:
        met = None
    else:
        met = value >= threshold if higher_is_better else value < threshold
    return {"item": item, "figure": figure, "value": value, "goal": label, "threshold": threshold, "met": met}


def evaluate_goals(ops_doc, train, evaluation):
    goals = []
    for entry in (ops_doc or {}).get("benchmarks", []):
        info = entry.get("extra_info", {})
        if info.get("mode") != "fwdbwd" or info.get("backend") not in FUSED:
            continue
        for key, threshold, label in OP_GOALS.get(info.get("op"), []):
            goals.append(dict(_goal(entry.get("param"), key, threshold, label, info.get(key)), op=info.get("op")))
    for result in (train or {}).get("results", []):
        if result.get("backend") in FUSED:
            goals.append(
                _goal(
                    f"train step {result['backend']}",
                    "speedup_vs_eager",
                    TRAIN_MIN_SPEEDUP,
                    f"≥ {TRAIN_MIN_SPEEDUP}× eager",
                    result.get("speedup_vs_eager"),
                )
            )
    if evaluation and "seconds" in evaluation:
        item = f"evaluation {evaluation['queries']}x{evaluation['gallery']}"
        goals.append(_goal(item, "seconds", EVAL_MAX_S, f"< {EVAL_MAX_S:g} s", evaluation["seconds"], False))
        peak = evaluation.get("peak_extra_memory_mib")
        goals.append(
            _goal(item, "peak_extra_bytes", EVAL_MAX_BYTES, "< 4 GB", None if peak is None else peak * 2**20, False)
        )
    # a goal with no figure at all (its step failed or did not run) stays in the list, not measured
    missing = []
    measured_ops = {g["op"] for g in goals if "op" in g}
    for op, op_goals in OP_GOALS.items():
        if op not in measured_ops:
            missing += [
                _goal(f"{op} fwdbwd (triton, native)", key, threshold, label, None)
                for key, threshold, label in op_goals
            ]
    if not any(g["item"].startswith("train step") for g in goals):
        missing.append(
            _goal("train step --fused", "speedup_vs_eager", TRAIN_MIN_SPEEDUP, f"≥ {TRAIN_MIN_SPEEDUP}× eager", None)
        )
    if not any(g["item"].startswith("evaluation") for g in goals):
        missing += [
            _goal("evaluation MSMT17", "seconds", EVAL_MAX_S, f"< {EVAL_MAX_S:g} s", None),
            _goal("evaluation MSMT17", "peak_extra_bytes", EVAL_MAX_BYTES, "< 4 GB", None),
        ]
    for goal in missing:
        goal["not_run"] = True
    return goals + missing


def _fmt(value, spec, suffix=""):
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _result(goals):
    if not goals:
        return "—"
    if any(g["met"] is None for g in goals):
        return "not measured"
    missed = [g["goal"] for g in goals if not g["met"]]
    return "pass" if not missed else "FAIL (" + "; ".join(missed) + ")"


def _op_rows(ops_doc, goals_by_item):
    rows = []
    for entry in (ops_doc or {}).get("benchmarks", []):
        info = entry["extra_info"]
        goals = goals_by_item.get(entry["param"], [])
        time_text = f"kernel {info['kernel_us']:.1f} µs (wall {info['wall_us']:.1f} µs)"
        figures = (
            f"{_fmt(info.get('speedup_vs_eager'), '.2f', '×')} eager, "
            f"{_fmt(info.get('speedup_vs_compile'), '.2f', '×')} compile, "
            f"{info['floor_pct']:.0f}% of floor ({info['floor_us']:.1f} µs = {info['min_bytes'] / 1e6:.1f} MB), "
            f"{info['gbps']:.0f} GB/s"
        )
        config = f"{info['shape_name']} {'×'.join(map(str, info['shape']))} {info['dtype']} {info['mode']}"
        goal_text = ", ".join(g["goal"] for g in goals) or "—"
        rows.append((info["op"], config, info["backend"], time_text, figures, goal_text, _result(goals)))
    return rows


def _train_rows(train, goals_by_item):
    rows = []
    if not train:
        return rows
    config = train.get("config", {})
    what = (
        f"{config.get('backbone')}-O {'×'.join(map(str, config.get('input', [])))} batch {config.get('batch')} "
        f"amp {config.get('amp')}"
    )
    for result in train.get("results", []):
        goals = goals_by_item.get(f"train step {result['backend']}", [])
        peak = result.get("peak_memory_mib")
        figures = f"{result['images_per_s']:.1f} images/s, {_fmt(result.get('speedup_vs_eager'), '.3f', '×')} eager" + (
            "" if peak is None else f", peak {peak:.0f} MiB"
        )
        label = "eager" if result["backend"] == "eager" else f"--fused ({result['backend']})"
        rows.append(
            (
                "train step",
                what,
                label,
                f"{result['step_ms']:.1f} ms",
                figures,
                ", ".join(g["goal"] for g in goals) or "—",
                _result(goals),
            )
        )
    for failure in train.get("failures", []):
        rows.append(("train step", what, failure["backend"], "—", failure["error"][:200], "—", "FAIL (did not run)"))
    return rows


def _large_rows(large):
    """The row of gpu_check_large.py: exact re-ranking at Market-1501 + 500k (goal < 60 s on a GPU)."""
    if not large or "seconds" not in large:
        return []
    met = large["seconds"] < large.get("goal_seconds", 60)
    config = f"{large['queries']:,} × {large['gallery']:,}, {large['dim']} dims, k1 {large['rerank']['k1']}"
    peak = large.get("peak_extra_memory_mib")
    figures = f"peak extra memory {_fmt(peak, '.0f', ' MiB')}, +rk mAP {large.get('rk_mAP', 0):.4f} (synthetic)"
    result = "—" if large.get("device") != "cuda" else ("pass" if met else "FAIL")
    goal = f"< {large.get('goal_seconds', 60)} s"
    return [
        (
            "exact re-ranking, Market+500k",
            config,
            large.get("device"),
            f"{large['seconds']:.2f} s",
            figures,
            goal,
            result,
        )
    ]


def _eval_rows(evaluation, goals_by_item, label="evaluation"):
    if not evaluation or "seconds" not in evaluation:
        return []
    item = f"{label} {evaluation['queries']}x{evaluation['gallery']}"
    goals = goals_by_item.get(item, [])
    peak = evaluation.get("peak_extra_memory_mib")
    dims = evaluation.get("dims", {})
    config = (
        f"{evaluation['queries']:,} × {evaluation['gallery']:,}, {dims.get('global')} + {dims.get('spatial')} dims, "
        f"{evaluation.get('dtype')}"
    )
    figures = (
        f"peak extra memory {_fmt(peak, '.0f', ' MiB')}, fusion mAP {evaluation.get('fusion_mAP', 0):.4f} (synthetic)"
    )
    if "rerank" in evaluation:
        settings = evaluation["rerank"]
        config += f", k1 {settings['k1']}, k2 {settings['k2']}, λ {settings['lambda_value']}"
        figures += f", fusion+rk mAP {evaluation.get('fusion_rk_mAP', 0):.4f}"
    return [
        (
            label,
            config,
            evaluation.get("device"),
            f"{evaluation['seconds']:.2f} s",
            figures,
            ", ".join(g["goal"] for g in goals),
            _result(goals),
        )
    ]


def render_markdown(document, title):
    check = document["gpu_check"]
    env = check.get("environment") or {}
    lines = [f"# {title}", ""]
    if check["mode"] == "smoke":
        lines += [
            "**Smoke run on the CPU at tiny sizes**: it checks the kit end to end; its figures and "
            "the pass/fail column say nothing about a GPU.",
            "",
        ]
    copy = env.get("copy_gbps")
    lines += [
        f"- date (UTC): {check['date_utc']}; mode: {check['mode']}",
        f"- device: {env.get('gpu') or check.get('device_name') or '—'}; torch {env.get('torch')}, "
        f"triton {env.get('triton')}, CUDA {env.get('cuda_runtime')}, Python {env.get('python')}",
        f"- copy bandwidth (floor basis): {_fmt(copy, '.1f', ' GB/s')}; op times: "
        + (
            "perf_counter medians (CPU)"
            if check["mode"] == "smoke"
            else "kernel = CUDA events with L2 flushed before every call, wall = host-inclusive"
        ),
    ]
    for step in check["steps"]:
        detail = f" — {step['detail']}" if step["detail"] else ""
        lines.append(f"- step {step['step']}: {step['status']} ({step['seconds']:.0f} s){detail}")
    tests = check.get("tests")
    if tests and "tests" in tests:
        lines.append(
            f"- tests: {tests['passed']} passed, {tests['failures'] + tests['errors']} failed, "
            f"{tests['skipped']} skipped"
            + (f" (failed: {', '.join(tests['failed_tests'][:10])})" if tests["failed_tests"] else "")
        )
    ops_check = check.get("ops") or {}
    for failure in ops_check.get("failures", []):
        lines.append(f"- op case FAILED: {failure['case']}: {failure['error'][:300]}")
    if ops_check.get("not_run"):
        lines.append(f"- op cases not run: {len(ops_check['not_run'])} ({ops_check['not_run'][0]['reason']})")
    goals = check["goals"]
    met = sum(1 for g in goals if g["met"])
    unmeasured = sum(1 for g in goals if g["met"] is None)
    lines += [f"- goals met: {met} of {len(goals)}" + (f" ({unmeasured} not measured)" if unmeasured else ""), ""]
    lines += [
        "| item | configuration | backend | time | figures | goal | result |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    goals_by_item = {}
    for goal in goals:
        goals_by_item.setdefault(goal["item"], []).append(goal)
    rows = (
        _op_rows(document, goals_by_item)
        + _train_rows(check.get("train"), goals_by_item)
        + _eval_rows(check.get("evaluation"), goals_by_item)
        + _eval_rows(check.get("evaluation_rerank"), goals_by_item, "evaluation + re-ranking")
        + _large_rows(check.get("rerank_large"))
    )
    for row in rows:
        lines.append("| " + " | ".join(str(cell).replace("|", "/") for cell in row) + " |")
    for item, item_goals in goals_by_item.items():
        if all(g.get("not_run") for g in item_goals):
            lines.append(
                f"| {item} | — | — | — | (not measured: its step failed or did not run) | "
                f"{', '.join(g['goal'] for g in item_goals)} | not measured |"
            )
    return "\n".join(lines) + "\n"


def _write(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def build(work, mode, device_name=None):
    ops_doc = _load(os.path.join(work, "ops.json"))
    if not ops_doc or "benchmarks" not in ops_doc:
        ops_doc = {
            "machine_info": {},
            "commit_info": {},
            "benchmarks": [],
            "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "version": None,
            "gpu_check": {
                "failures": [],
                "not_run": [],
                "floors": [],
                "error": (ops_doc or {}).get("unreadable", "the op benchmarks did not run"),
            },
        }
    env = _load(os.path.join(work, "env.json"))
    train = _load(os.path.join(work, "train.json"))
    evaluation = _load(os.path.join(work, "eval.json"))
    goals = evaluate_goals(ops_doc, train, evaluation)
    ops_doc["gpu_check"] = {
        "mode": mode,
        "device_name": device_name,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": env,
        "steps": _steps(os.path.join(work, "steps.tsv")),
        "tests": _tests(os.path.join(work, "tests.xml")),
        "ops": ops_doc.get("gpu_check"),
        "train": train,
        "evaluation": evaluation,
        "evaluation_rerank": _load(os.path.join(work, "eval_rerank.json")),
        "rerank_large": _load(os.path.join(work, "rerank_large.json")),
        "goals": goals,
    }
    return ops_doc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="the run's work folder")
    parser.add_argument("--out", required=True, help="output path without extension (.json and .md are added)")
    parser.add_argument("--mode", choices=("full", "quick", "smoke"), required=True)
    parser.add_argument("--device-name", help="the device's name, shown when the environment step wrote nothing")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.work):
        parser.error(f"--work {args.work!r} is not a folder")
    document = build(args.work, args.mode, args.device_name)
    title = os.path.basename(args.out)
    _write(args.out + ".json", json.dumps(document, indent=1))
    _write(args.out + ".md", render_markdown(document, title))
    goals = document["gpu_check"]["goals"]
    met = sum(1 for g in goals if g["met"])
    print(f"report: {args.out}.json, {args.out}.md (goals met: {met} of {len(goals)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
