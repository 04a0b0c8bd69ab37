"""Open-set answers end to end: eval records the thresholds and draws the ROC, export carries one in the model
file, search answers "no match" beyond it, FeatureExtractor.verify decides by it (scstn_vcn.engine.open_set)."""

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from scstn_vcn import FeatureExtractor
from scstn_vcn.cli import main
from scstn_vcn.configs import load_config, model_identity
from scstn_vcn.engine import model_file, open_set
from scstn_vcn.engine.checkpoint import CheckpointError
from scstn_vcn.metrics.verification import fpr_label

PNG = b"\x89PNG\r\n\x1a\n"


def _cli(argv):
    """(exit code, stdout, stderr) of the CLI."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small synthetic set, a model file of the demo model with random weights (no training: what is
    tested is how thresholds travel), and its `eval` results.json."""
    from scstn_vcn.data import build_dataset, make_synthetic
    from scstn_vcn.engine.builders import build_model_from_config

    base = tmp_path_factory.mktemp("threshold")
    root = make_synthetic(
        base / "data",
        num_identities=8,
        seed=0,
        images_per_identity=3,
        gallery_per_identity=3,
        query_per_identity=1,
        num_distractors=2,
        num_junk=1,
    )
    config = load_config("demo", [(["data", "root"], str(root)), (["data", "height"], 64), (["data", "width"], 32)])
    dataset = build_dataset("synthetic", str(root))
    torch.manual_seed(0)
    model = build_model_from_config(config, dataset.num_train_pids, pretrained=False).eval()
    path = base / "model.safetensors"
    model_file.save_model_file(path, model, config, model_identity(config, dataset.num_train_pids))
    results = base / "eval" / "results.json"
    flags = ["--set", "data.workers=0", "--set", "eval.workers=0", "--set", "eval.batch_size=16", "--device", "cpu"]
    flags += ["--set", "eval.fprs=[0.01,0.05,0.2]"]
    code, out, err = _cli(["eval", "--checkpoint", path, "--data-root", root, "--output", results, *flags])
    assert code == 0, err
    return {"base": base, "root": root, "model_file": path, "results": results, "eval_out": out, "dataset": dataset}


def test_eval_records_thresholds_and_draws_the_roc(setup):
    payload = json.loads(setup["results"].read_text())
    assert "TPR@1e-2" in setup["eval_out"] and "ROC curve written to" in setup["eval_out"]
    assert (setup["results"].parent / "roc.png").read_bytes()[:8] == PNG
    rows = payload["verification"]["rows"]
    assert set(rows) == {"global", "spatial", "fusion"}
    for name, row in rows.items():
        assert [p["target_fpr"] for p in row["points"]] == [0.01, 0.05, 0.2]
        for point in row["points"]:
            assert point["fpr"] <= point["target_fpr"]
            percent = payload["results"][name][f"TPR@FPR={fpr_label(point['target_fpr'])}"]
            assert percent == round(100 * point["tpr"], 2)
        assert payload["targets"][0]["verification"]["rows"][name] == row
    # The recorded threshold is the ROC point's: recompute it from the model's features and the protocol.
    from sklearn.metrics import roc_curve

    fe = FeatureExtractor(setup["model_file"], device="cpu", batch_size=16)
    data = setup["dataset"]
    q, g = fe([it[0] for it in data.query]), fe([it[0] for it in data.gallery])
    dist = fe.distance(q, g).numpy()
    q_pids, q_cams = np.array([it[1] for it in data.query]), np.array([it[2] for it in data.query])
    g_pids, g_cams = np.array([it[1] for it in data.gallery]), np.array([it[2] for it in data.gallery])
    same = q_pids[:, None] == g_pids[None, :]
    keep = (g_pids[None, :] != -1) & ~(same & (q_cams[:, None] == g_cams[None, :]))
    fpr, tpr, thresholds = roc_curve(same[keep], -dist[keep], drop_intermediate=False)
    for point in rows["fusion"]["points"]:
        i = np.searchsorted(fpr, point["target_fpr"], side="right") - 1
        assert point["tpr"] == tpr[i]
        recorded = -math.inf if point["threshold"] is None else point["threshold"]  # null: nothing accepted
        assert recorded == pytest.approx(-thresholds[i], abs=1e-6)


def test_export_carries_the_threshold_and_search_uses_it(setup, tmp_path):
    src, results = setup["model_file"], setup["results"]
    out = tmp_path / "with_threshold.safetensors"
    argv = ["export", "--checkpoint", src, "--format", "safetensors", "--output", out]
    code, printed, err = _cli([*argv, "--threshold-fpr", "0.05", "--results", results])
    assert code == 0, err
    expected = open_set.threshold_from_results(results, 0.05, "fusion")
    assert "same person when fusion distance <=" in printed
    assert model_file.open_model_source(out).threshold == expected
    with safe_open(str(out), framework="pt") as handle:
        assert json.loads(handle.metadata()["threshold"])["value"] == expected["value"]
    # Re-exported, the model file keeps its threshold; --no-threshold drops it; --threshold sets one by hand.
    again = tmp_path / "again.safetensors"
    assert _cli(["export", "--checkpoint", out, "--format", "safetensors", "--output", again])[0] == 0
    assert model_file.open_model_source(again).threshold == expected
    assert _cli([*argv[:2], out, *argv[3:-1], again, "--no-threshold"])[0] == 0
    assert model_file.open_model_source(again).threshold is None
    assert _cli([*argv[:-1], again, "--threshold", "0.5"])[0] == 0
    assert model_file.open_model_source(again).threshold == {"distance": "fusion", "value": 0.5}

    query = str(sorted((setup["root"] / "query").iterdir())[0])
    gallery = setup["root"] / "bounding_box_test"
    search = ["search", "--query", query, "--gallery", gallery, "--topk", "5", "--no-progress", "--device", "cpu"]
    code, plain, err = _cli([*search, "--checkpoint", out, "--output", tmp_path / "plain.png"])
    assert code == 0, err
    distances = [float(line.split()[1]) for line in plain.splitlines() if line[:4].strip().isdigit()]
    assert len(distances) == 5 and "the model carries a threshold" in plain
    # --fpr 0.05: the model file's own threshold; only the gallery images within it are listed.
    code, printed, err = _cli([*search, "--checkpoint", out, "--fpr", "0.05", "--output", tmp_path / "fpr.png"])
    assert code == 0, err
    listed = [float(line.split()[1]) for line in printed.splitlines() if line[:4].strip().isdigit()]
    assert listed == [d for d in distances if d <= expected["value"] + 5e-5]
    # Nothing within the distance: "no match", and the figure shows the query alone.
    below = min(distances) / 2
    code, printed, err = _cli([*search, "--checkpoint", out, "--max-distance", below, "--output", tmp_path / "n.png"])
    assert code == 0, err
    assert "no match: no gallery image within" in printed and (tmp_path / "n.png").read_bytes()[:8] == PNG
    assert not [line for line in printed.splitlines() if line[:4].strip().isdigit()]
    code, printed, _ = _cli([*search, "--checkpoint", out, "--max-distance", 10, "--output", tmp_path / "all.png"])
    assert [float(line.split()[1]) for line in printed.splitlines() if line[:4].strip().isdigit()] == distances
    # --fpr of another target: from a results.json, or an error naming what the model carries.
    code, printed, err = _cli(
        [*search, "--checkpoint", out, "--fpr", "0.2", "--eval-results", results, "--output", tmp_path / "r.png"]
    )
    assert code == 0, err
    assert f"{open_set.threshold_from_results(results, 0.2, 'fusion')['value']:.4f}" in printed
    code, _, err = _cli([*search, "--checkpoint", out, "--fpr", "0.2", "--output", tmp_path / "x.png"])
    assert code == 2 and "carries a threshold for FPR 0.05" in err and "--eval-results" in err


def test_export_threshold_errors(setup, tmp_path):
    argv = ["export", "--checkpoint", setup["model_file"], "--output", tmp_path / "m.safetensors"]
    code, _, err = _cli([*argv, "--format", "safetensors", "--threshold-fpr", "0.001", "--results", setup["results"]])
    assert code == 2 and "no threshold at FPR 0.001" in err and "0.01, 0.05, 0.2" in err
    code, _, err = _cli([*argv, "--format", "safetensors", "--threshold", "nan"])
    assert code == 2 and "--threshold: the threshold value is nan" in err
    code, _, err = _cli([*argv, "--format", "onnx", "--threshold", "0.5"])
    assert code == 2 and "--threshold only applies to --format safetensors" in err
    code, _, err = _cli(
        [*argv, "--format", "safetensors", "--threshold-fpr", "0.05", "--results", tmp_path / "no.json"]
    )
    assert code == 2 and "no.json: no such file" in err
    (tmp_path / "old.json").write_text(json.dumps({"results": {}}))
    code, _, err = _cli(
        [*argv, "--format", "safetensors", "--threshold-fpr", "0.05", "--results", tmp_path / "old.json"]
    )
    assert code == 2 and "has no 'verification' rows" in err


def test_threshold_that_accepts_nothing_and_rerank_rows_are_refused(tmp_path):
    results = tmp_path / "results.json"
    point = {"target_fpr": 1e-4, "fpr": 0.0, "tpr": 0.0, "threshold": None}
    row = {"num_positive_pairs": 3, "num_negative_pairs": 50, "points": [point], "roc": {}}
    results.write_text(json.dumps({"verification": {"rows": {"fusion": row, "fusion+rk": row}}}))
    with pytest.raises(open_set.ThresholdError, match="accepts nothing"):
        open_set.threshold_from_results(results, 1e-4)
    with pytest.raises(open_set.ThresholdError, match="re-ranked"):
        open_set.threshold_from_results(results, 1e-4, "fusion+rk")


def test_a_model_file_with_a_broken_threshold_is_refused(setup, tmp_path):
    from safetensors.torch import load_file, save_file

    with safe_open(str(setup["model_file"]), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(setup["model_file"]))
    for bad, message in (
        ("{not json", "not valid JSON"),
        (json.dumps({"distance": "fusion", "value": "near"}), "expected a finite number"),
        (json.dumps({"distance": "cosine", "value": 0.3}), "expected one of"),
        (json.dumps({"distance": "fusion", "value": 0.3, "run": "x"}), "unknown entries"),
    ):
        path = tmp_path / "bad.safetensors"
        save_file(tensors, str(path), metadata={**metadata, "threshold": bad})
        with pytest.raises(CheckpointError, match=message):
            model_file.open_model_source(path)


def test_extractor_compare_and_verify(setup, tmp_path):
    fe = FeatureExtractor(setup["model_file"], device="cpu", batch_size=16)
    assert fe.threshold is None
    gallery = sorted(str(p) for p in (setup["root"] / "bounding_box_test").iterdir())[:6]
    feats = fe(gallery)
    matrix = fe.distance(feats, feats)
    # one against many: the row `distance` computes for a query of one (as search does), bit for bit
    first = {n: v[:1] for n, v in feats.items()}
    assert torch.equal(fe.compare(first, feats), fe.distance(first, feats)[0])
    assert torch.equal(fe.compare(feats, first), fe.distance(first, feats)[0])
    torch.testing.assert_close(fe.compare(gallery[0], gallery), matrix[0], rtol=0, atol=1e-6)
    # pairs: the i-th with the i-th
    pairs = fe.compare(gallery[:3], gallery[3:6])
    assert pairs.shape == (3,)
    torch.testing.assert_close(pairs, matrix[[0, 1, 2], [3, 4, 5]], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="carries no threshold"):
        fe.verify(gallery[0], gallery[1])
    value = float(pairs[1])
    distances, same = fe.verify(gallery[:3], gallery[3:6], threshold=value)
    assert torch.equal(distances, pairs) and same.tolist() == [bool(d <= value) for d in pairs]
    with pytest.raises(ValueError, match="for the global distance"):
        fe.verify(gallery[0], gallery[1], threshold={"distance": "global", "value": 0.3})
    with pytest.raises(ValueError, match="2 items and b 3"):
        fe.compare(gallery[:2], gallery[:3])
    # A model file's threshold is the default.
    out = tmp_path / "t.safetensors"
    code, _, err = _cli(
        ["export", "--checkpoint", setup["model_file"], "--format", "safetensors", "--output", out]
        + ["--threshold", str(value)]
    )
    assert code == 0, err
    fe2 = FeatureExtractor(out, device="cpu", batch_size=16)
    assert fe2.threshold == {"distance": "fusion", "value": value}
    assert torch.equal(fe2.verify(gallery[:3], gallery[3:6])[1], same)
    assert math.isfinite(fe2.threshold["value"])


def test_visualize_roc_from_results(setup, tmp_path):
    code, printed, err = _cli(["visualize", "--what", "roc", "--results", setup["results"], "--output", tmp_path])
    assert code == 0, err
    assert (tmp_path / "roc.png").read_bytes()[:8] == PNG
    code, _, err = _cli(["visualize", "--what", "roc", "--output", tmp_path])
    assert code == 2 and "--results JSON" in err
    # Without --results: evaluated from the model and the data set.
    evaluated = tmp_path / "evaluated"
    argv = ["visualize", "--what", "roc", "--checkpoint", setup["model_file"], "--data-root", setup["root"]]
    argv += ["--output", evaluated, "--device", "cpu", "--set", "eval.workers=0", "--set", "data.workers=0"]
    code, printed, err = _cli(argv)
    assert code == 0, err
    assert (evaluated / "roc.png").read_bytes()[:8] == PNG and "roc.png" in printed
