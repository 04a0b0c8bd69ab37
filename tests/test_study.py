"""`scstn-vcn study`: results.csv, tables and figures, resuming, the detection-error sweep, bad input
(tiny: 1-epoch runs of the demo recipe on 24 synthetic identities)."""

import csv
import hashlib

import pytest

from scstn_vcn.cli import main
from scstn_vcn.commands.study import COLUMNS, append_rows, read_results
from scstn_vcn.commands.study_report import ORDERINGS, PAPER_TABLE3
from scstn_vcn.models import ABLATIONS

TINY = ["--epochs", "1", "--num-identities", "24", "--test-identities", "8", "--no-progress", "--set", "data.workers=0"]


def study(out, *extra):
    return main(["study", "--output", str(out), *TINY, *extra])


def rows_of(out):
    with open(out / "results.csv") as handle:
        return list(csv.DictReader(handle))


def test_paper_reference_covers_every_row_and_ordering():
    assert set(PAPER_TABLE3) == set(ABLATIONS)
    for _, better, worse, _ in ORDERINGS:
        assert better in ABLATIONS and worse in ABLATIONS


@pytest.fixture(scope="module")
def two_variant_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert study(out, "--variants", "baseline,full", "--seeds", "0") == 0
    return out


def test_study_writes_rows_table_and_figure(two_variant_study, capsys):
    out = two_variant_study
    rows = rows_of(out)
    assert tuple(rows[0]) == COLUMNS
    # baseline: global only; full: global, spatial and their fusion.
    assert sorted((r["variant"], r["feature"]) for r in rows) == [
        ("baseline", "global"),
        ("full", "fusion"),
        ("full", "global"),
        ("full", "spatial"),
    ]
    for r in rows:
        assert r["seed"] == "0" and r["detection_error"] == "" and r["epochs"] == "1"
        assert 0 <= float(r["rank1"]) <= 100 and 0 <= float(r["mAP"]) <= 100 and float(r["seconds"]) > 0
    params = {r["variant"]: int(r["params"]) for r in rows}
    assert params["full"] > params["baseline"] > 0
    table = (out / "table3.md").read_text()
    assert ABLATIONS["full"].row in table and "96.1" in table and "85.3" in table  # the paper's numbers
    assert f"+{params['full'] - params['baseline']:,}" in table
    assert "| (1) VCN and SC-STN add up | full > | baseline |" in table
    assert (out / "table3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "runs" / "full-s0" / "log.csv").is_file() and (out / "runs" / "full-s0" / "train.log").is_file()

    # The same command again runs nothing and adds no row.
    before = (out / "results.csv").read_bytes()
    capsys.readouterr()
    assert study(out, "--variants", "baseline,full", "--seeds", "0") == 0
    assert "0 to run" in capsys.readouterr().out
    assert (out / "results.csv").read_bytes() == before


def test_interrupted_study_resumes(tmp_path):
    out = tmp_path / "s"
    assert study(out, "--variants", "baseline", "--seeds", "0") == 0
    first = (out / "results.csv").read_bytes()
    # A crash in the middle of writing the next run's rows leaves a partial line behind.
    with open(out / "results.csv", "a") as handle:
        handle.write("full,0,,glo")
    (out / "runs" / "full-s0").mkdir()
    (out / "runs" / "full-s0" / "stale.txt").write_text("from the interrupted attempt")
    assert study(out, "--variants", "baseline,full", "--seeds", "0") == 0
    data = (out / "results.csv").read_bytes()
    assert data.startswith(first) and b"glo\n" not in data and data.endswith(b"\n")
    rows = rows_of(out)
    assert [r["variant"] for r in rows].count("baseline") == 1  # not trained again
    assert {r["feature"] for r in rows if r["variant"] == "full"} == {"global", "spatial", "fusion"}
    assert not (out / "runs" / "full-s0" / "stale.txt").exists()  # the unfinished run started over


def test_read_results_drops_a_partial_last_line(tmp_path):
    path = tmp_path / "results.csv"
    row = {c: "1" for c in COLUMNS} | {"variant": "full", "feature": "fusion", "detection_error": ""}
    append_rows(path, [row])
    append_rows(path, [row | {"seed": "2"}])
    with open(path, "a") as handle:
        handle.write("full,3,,fus")
    assert [r["seed"] for r in read_results(path)] == ["1", "2"]
    assert path.read_text().endswith("\n") and "fus\n" not in path.read_text()


def test_detection_error_sweep(tmp_path):
    out = tmp_path / "sweep"
    assert study(out, "--variants", "baseline,full", "--seeds", "0", "--detection-error", "0,0.4") == 0
    rows = rows_of(out)
    assert {(r["variant"], r["detection_error"]) for r in rows} == {
        ("baseline", "0"),
        ("baseline", "0.4"),
        ("full", "0"),
        ("full", "0.4"),
    }
    assert (out / "runs" / "full-s0-e0.4").is_dir()
    text = (out / "misalignment.md").read_text()
    assert "E = 0 " in text and "E = 0.4" in text and "full − vcn_no_stn" not in text  # no vcn_no_stn run
    assert (out / "misalignment.png").is_file()

    def digest(folder):
        return sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.jpg"))

    # One set per level: the same people, drawn with other boxes.
    a, b = out / "data" / "e0" / "bounding_box_train", out / "data" / "e0.4" / "bounding_box_train"
    assert sorted(p.name for p in a.glob("*.jpg")) == sorted(p.name for p in b.glob("*.jpg"))
    assert not set(digest(a)) & set(digest(b))


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--variants", "baseline,nonsense"], "--variants"),
        (["--seeds", ""], "--seeds"),
        (["--seeds", "0,x"], "--seeds"),
        (["--detection-error=-0.1"], "--detection-error"),
        (["--detection-error", "0,0.9"], "--detection-error"),
        (["--epochs", "0"], "--epochs"),
        (["--test-identities", "23"], "--test-identities"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, extra, flag):
    err = _error(capsys, ["study", "--output", str(tmp_path / "s"), "--num-identities", "24", *extra])
    assert err.startswith("scstn-vcn study: error:") and flag in err
    assert not (tmp_path / "s" / "results.csv").exists()


def test_a_study_folder_refuses_other_settings(two_variant_study, capsys):
    err = _error(
        capsys,
        ["study", "--output", str(two_variant_study), *TINY, "--epochs", "2", "--variants", "baseline", "--seeds", "0"],
    )
    assert "other settings" in err and "epochs" in err
