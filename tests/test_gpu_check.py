"""The one-command GPU kit benchmarks/gpu_check.sh, checked without a GPU.

A GPU session is rare and short, so a typo in the kit must show up here: its smoke mode runs the same
script end to end on the CPU at tiny sizes (into a temporary folder) and must write the JSON (pytest-
benchmark's schema, extra_info of every op entry), the Markdown table with its goals and the log; without
a CUDA device and without --smoke it must say so on one line and exit 3 before building anything. The
goal logic of the report is checked on made-up figures.
"""

import glob
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
OP_FIELDS = {
    "device",
    "op",
    "shape",
    "dtype",
    "mode",
    "backend",
    "speedup",
    "gbps",
    "floor_pct",
    "kernel_us",
    "wall_us",
    "floor_us",
    "min_bytes",
    "speedup_vs_compile",
}
STATS_FIELDS = {
    "min",
    "max",
    "mean",
    "stddev",
    "rounds",
    "median",
    "iqr",
    "q1",
    "q3",
    "ops",
    "total",
    "data",
    "iterations",
}


def _run_kit(*args, timeout=420):
    # No GPU, whatever the machine: the smoke run is the CPU path, and the no-CUDA check needs none.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


def _report_module():
    spec = importlib.util.spec_from_file_location("gpu_check_report", ROOT / "benchmarks" / "gpu_check_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_says_so_on_one_line_and_exits_3(tmp_path):
    out = tmp_path / "results"
    done = _run_kit("--out", str(out), timeout=120)
    assert done.returncode == 3, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0], done.stdout
    assert not out.exists(), "nothing may be written (or built) without a CUDA device"


def test_bad_argument_is_refused(tmp_path):
    done = _run_kit("--outt", str(tmp_path), timeout=60)
    assert done.returncode == 2
    assert "unknown argument '--outt'" in done.stderr


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "results"
    done = _run_kit("--smoke", "--out", str(out))
    files = {ext: sorted(glob.glob(str(out / f"gpu-cpu-smoke-*.{ext}"))) for ext in ("json", "md", "log", "partial")}
    return done, out, files


def test_smoke_run_succeeds_and_writes_the_three_files(smoke):
    done, out, files = smoke
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert len(files["json"]) == len(files["md"]) == len(files["log"]) == 1, sorted(os.listdir(out))
    assert not files["partial"], "the log must be renamed from .log.partial when the run ends"
    assert not [name for name in os.listdir(out) if ".tmp" in name], "temporary files left behind"


def test_smoke_skips_each_cuda_step_on_one_line(smoke):
    done, _, files = smoke
    log = pathlib.Path(files["log"][0]).read_text()
    for step in ("build", "tests", "sanitizer"):
        lines = [line for line in log.splitlines() if line.startswith(f"gpu_check: skipping {step}:")]
        assert len(lines) == 1 and "CUDA" in lines[0], (step, lines)
    assert "=== summary" in log and "gpu_check: every step ran" in log


def test_smoke_json_is_pytest_benchmark_with_the_op_fields(smoke):
    _, _, files = smoke
    document = json.loads(pathlib.Path(files["json"][0]).read_text())
    assert {"machine_info", "commit_info", "benchmarks", "datetime", "version"} <= set(document)
    entries = document["benchmarks"]
    assert entries
    for entry in entries:
        assert {"group", "name", "fullname", "params", "param", "extra_info", "options", "stats"} <= set(entry)
        info = entry["extra_info"]
        assert OP_FIELDS <= set(info), (entry["name"], OP_FIELDS - set(info))
        assert info["device"] == "cpu" and info["dtype"] == "float32" and info["shape"] == [2, 16, 6, 4]
        assert STATS_FIELDS <= set(entry["stats"]), STATS_FIELDS - set(entry["stats"])
        assert entry["stats"]["rounds"] == len(entry["stats"]["data"]) == 3
        assert info["kernel_us"] > 0 and info["wall_us"] > 0 and info["floor_pct"] > 0 and info["gbps"] > 0
        assert info["speedup"] > 0 and info["speedup_vs_compile"] > 0
    seen = {(e["extra_info"]["op"], e["extra_info"]["mode"], e["extra_info"]["backend"]) for e in entries}
    for op in ("channel_pool", "affine_hpool", "vertical_proj"):
        for mode in ("fwd", "fwdbwd"):
            assert {(op, mode, b) for b in ("eager", "compile", "native")} <= seen, (op, mode)
    eager = [e["extra_info"] for e in entries if e["extra_info"]["backend"] == "eager"]
    assert all(abs(info["speedup"] - 1) < 1e-9 for info in eager)


def test_smoke_json_records_steps_train_step_evaluation_and_goals(smoke):
    _, _, files = smoke
    check = json.loads(pathlib.Path(files["json"][0]).read_text())["gpu_check"]
    assert check["mode"] == "smoke"
    status = {step["step"]: step["status"] for step in check["steps"]}
    assert status == {
        "build": "skipped",
        "environment": "ok",
        "tests": "skipped",
        "sanitizer": "skipped",
        "op-benchmarks": "ok",
        "train-step": "ok",
        "evaluation": "ok",
        "evaluation-rerank": "ok",
        "rerank-large": "ok",
    }
    assert check["environment"]["copy_gbps"] > 0
    assert {r["backend"] for r in check["train"]["results"]} == {"eager", "native"}
    assert check["evaluation"]["seconds"] > 0 and check["evaluation"]["queries"] == 100
    assert check["evaluation_rerank"]["rerank"] == {"k1": 20, "k2": 6, "lambda_value": 0.3}
    assert 0 < check["evaluation_rerank"]["fusion_rk_mAP"] <= 1
    assert check["ops"]["failures"] == [] and check["ops"]["not_run"] == []
    figures = {
        (g["item"].split("-")[1] if g["item"].startswith("cpu-") else g["item"].split(" ")[0], g["figure"])
        for g in check["goals"]
    }
    assert ("affine_hpool", "speedup_vs_compile") in figures and ("affine_hpool", "floor_pct") in figures
    assert ("train", "speedup_vs_eager") in figures and ("evaluation", "seconds") in figures
    assert all(g["met"] in (True, False) for g in check["goals"])


def test_smoke_markdown_puts_every_figure_beside_its_goal(smoke):
    _, _, files = smoke
    text = pathlib.Path(files["md"][0]).read_text()
    assert "Smoke run on the CPU" in text
    assert "| item | configuration | backend | time | figures | goal | result |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert any(r.startswith("| affine_hpool |") and "≥ 6× eager, ≥ 2× torch.compile, ≥ 80% of floor" in r for r in rows)
    assert any(r.startswith("| channel_pool |") and "≥ 3× eager" in r for r in rows)
    assert any(r.startswith("| train step |") and "≥ 1.05× eager" in r for r in rows)
    assert any(r.startswith("| evaluation |") and "< 20 s, < 4 GB" in r for r in rows)
    assert any(r.startswith("| evaluation + re-ranking |") and "fusion+rk mAP" in r for r in rows)
    results = [r.rstrip(" |").rsplit("| ", 1)[-1] for r in rows]
    assert all(res == "—" or res == "pass" or res.startswith("FAIL") for res in results), results


def test_smoke_json_loads_in_pytest_benchmark_compare(smoke):
    _, _, files = smoke
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pytest_benchmark.cli import main; main()",
            "compare",
            files["json"][0],
            "--columns=median",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gpu_check_ops[cpu-affine_hpool-tiny-float32-fwdbwd-native]" in done.stdout


def _entry(op, backend, mode="fwdbwd", **figures):
    info = {
        "op": op,
        "backend": backend,
        "mode": mode,
        "speedup_vs_eager": None,
        "speedup_vs_compile": None,
        "floor_pct": None,
    }
    info.update(figures)
    return {"param": f"cuda-{op}-O96-float32-{mode}-{backend}", "extra_info": info}


def test_report_goals_pass_fail_and_missing():
    report = _report_module()
    ops_doc = {
        "benchmarks": [
            _entry("affine_hpool", "native", speedup_vs_eager=6.5, speedup_vs_compile=2.1, floor_pct=85.0),
            _entry("affine_hpool", "triton", speedup_vs_eager=5.9, speedup_vs_compile=2.5, floor_pct=79.0),
            _entry("affine_hpool", "eager", speedup_vs_eager=1.0),
            _entry("affine_hpool", "native", mode="fwd", speedup_vs_eager=1.0),
            _entry("channel_pool", "native", speedup_vs_eager=3.0),
            _entry("vertical_proj", "triton"),
        ]
    }
    train = {
        "results": [
            {"backend": "eager", "speedup_vs_eager": 1.0},
            {"backend": "triton", "speedup_vs_eager": 1.04},
            {"backend": "native", "speedup_vs_eager": 1.2},
        ]
    }
    evaluation = {"queries": 11659, "gallery": 82161, "seconds": 12.0, "peak_extra_memory_mib": 4000.0}
    goals = report.evaluate_goals(ops_doc, train, evaluation)
    met = {(g["item"], g["figure"]): g["met"] for g in goals}
    native, triton = "cuda-affine_hpool-O96-float32-fwdbwd-native", "cuda-affine_hpool-O96-float32-fwdbwd-triton"
    assert met[(native, "speedup_vs_eager")] and met[(native, "speedup_vs_compile")] and met[(native, "floor_pct")]
    assert (
        not met[(triton, "speedup_vs_eager")] and met[(triton, "speedup_vs_compile")] and not met[(triton, "floor_pct")]
    )
    assert met[("cuda-channel_pool-O96-float32-fwdbwd-native", "speedup_vs_eager")]  # 3.0 meets >= 3
    assert met[("cuda-vertical_proj-O96-float32-fwdbwd-triton", "speedup_vs_eager")] is None  # not measured
    assert not met[("train step triton", "speedup_vs_eager")] and met[("train step native", "speedup_vs_eager")]
    assert met[("evaluation 11659x82161", "seconds")]
    assert not met[("evaluation 11659x82161", "peak_extra_bytes")]  # 4000 MiB is over 4 GB
    assert len(goals) == 3 + 3 + 1 + 1 + 2 + 2  # no goal for eager, fwd, or the eager train step
    assert report._result([g for g in goals if g["item"] == triton]) == "FAIL (≥ 6× eager; ≥ 80% of floor)"
