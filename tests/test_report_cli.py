"""The report from the command line: `study --report` (baseline against full), `eval --report` with
`--compare` a checkpoint or a report folder, `train` with eval.report, and their usage errors (tiny:
1-epoch runs of the demo recipe on 24 synthetic identities)."""

import csv
import json

import pytest

from scstn_vcn.cli import main
from scstn_vcn.report import read_report

# Two 1-epoch trainings for the study, one for train: about 20 s of CPU for the module.
pytestmark = pytest.mark.slow

TINY = ["--epochs", "1", "--no-progress", "--set", "data.workers=0", "--set", "eval.workers=0"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("report_study")
    argv = ["study", "--output", str(out), "--num-identities", "24", "--test-identities", "8", *TINY]
    assert main(argv + ["--variants", "baseline,full", "--seeds", "0", "--report"]) == 0
    return out


def _summary_of(results_csv, variant):
    with open(results_csv) as handle:
        rows = [r for r in csv.DictReader(handle) if r["variant"] == variant]
    return {r["feature"]: {m: float(r[m]) for m in ("rank1", "rank5", "rank10", "mAP", "mINP")} for r in rows}


def test_study_compares_baseline_and_full(study):
    data = read_report(str(study / "report"))
    assert [run["short"] for run in data["runs"]] == ["baseline", "full"]
    assert data["runs"][0]["rows"] == ["global"] and data["runs"][1]["rows"] == ["global", "spatial", "fusion"]
    # Evaluated again from the checkpoints: the numbers the study recorded after training.
    for run in data["runs"]:
        recorded = _summary_of(study / "results.csv", run["short"])
        summary = {row: {m: v for m, v in run["summary"][row].items() if m in recorded[row]} for row in run["rows"]}
        assert summary == recorded
    assert data["runs"][0]["align"] is None and data["runs"][1]["align"]["row"] == "spatial"
    assert data["query"]["count"] == len(data["runs"][1]["per_query"]["fusion"]["ap"]) > 0


def _eval(study, variant, *extra):
    checkpoint = study / "runs" / f"{variant}-s0" / "checkpoint.pth"
    data = ["--data-root", str(study / "data"), "--dataset", "synthetic", "--set", "eval.workers=0"]
    return main(["eval", "--checkpoint", str(checkpoint), *data, *extra])


def test_eval_report_with_a_second_checkpoint_and_a_report_folder(study, tmp_path, capsys):
    folder = tmp_path / "report"
    results = tmp_path / "results.json"
    baseline = study / "runs" / "baseline-s0" / "checkpoint.pth"
    code = _eval(study, "full", "--output", str(results), "--report", str(folder), "--compare", str(baseline))
    assert code == 0
    assert f"report written to {folder / 'index.html'}" in capsys.readouterr().out
    data = read_report(str(folder))
    payload = json.loads(results.read_text())
    assert data["runs"][0]["summary"] == payload["results"]
    other = json.loads((folder / "results-compare.json").read_text())
    assert data["runs"][1]["summary"] == other["results"] and other["checkpoint"] == str(baseline)
    assert [r["short"] for r in data["runs"]] == ["A", "B"] and data["topk"] == 10
    # A report folder as the other model, and --report-topk.
    second = tmp_path / "second"
    assert _eval(study, "baseline", "--report", str(second), "--compare", str(folder), "--report-topk", "3") == 0
    both = read_report(str(second))
    assert len(both["runs"][0]["per_query"]["global"]["top"][0]) == 3
    assert both["runs"][1]["per_query"] == data["runs"][0]["per_query"]


def test_train_writes_the_report_of_eval_report(study, tmp_path):
    folder = tmp_path / "train_report"
    argv = ["train", "--config", "demo", "--data-root", str(study / "data"), "--dataset", "synthetic"]
    argv += ["--output", str(tmp_path / "run"), *TINY, "--set", f"eval.report={folder}"]
    argv += ["--set", "train.max_steps_per_epoch=2"]
    assert main(argv) == 0
    data = read_report(str(folder))
    payload = json.loads((tmp_path / "run" / "results.json").read_text())
    assert data["runs"][0]["summary"] == payload["results"]


def _usage_error(capsys, code):
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_report_usage_errors(study, tmp_path, capsys):
    assert "--report DIR as well" in _usage_error(capsys, _eval(study, "full", "--compare", str(tmp_path)))
    assert "--report DIR as well" in _usage_error(capsys, _eval(study, "full", "--report-topk", "4"))
    missing = tmp_path / "nothing"
    err = _usage_error(capsys, _eval(study, "full", "--report", str(tmp_path / "r"), "--compare", str(missing)))
    assert f"--compare {missing}: no such" in err
    foreign = tmp_path / "site"
    foreign.mkdir()
    (foreign / "index.html").write_text("<p>mine</p>")
    assert "did not write" in _usage_error(capsys, _eval(study, "full", "--report", str(foreign)))
    code = _eval(study, "full", "--report", str(tmp_path / "r"), "--report-topk", "0")
    assert "eval.report_topk" in _usage_error(capsys, code)
