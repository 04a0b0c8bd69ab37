"""Evaluating a trained model on other data sets: `eval --dataset/--data-root` with one table per target,
the synthetic set written in three layouts (identical features and metrics), queries without a valid match
counted and reported ("valid queries: N of M"), and no valid query at all as one clear error."""

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch

from scstn_vcn.cli import main
from scstn_vcn.data import build_dataset, make_synthetic
from scstn_vcn.metrics import cosine_distance, evaluate_rank_full

SMALL = dict(
    num_identities=12,
    images_per_identity=4,
    gallery_per_identity=3,
    query_per_identity=2,
    num_distractors=2,
    num_junk=1,
)
TINY = ["--set", "data.height=64", "--set", "data.width=32", "--set", "eval.batch_size=32", "--workers", "0"]


def quiet(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model trained on the synthetic set of seed 2 (the command line's flags)."""
    base = tmp_path_factory.mktemp("cross")
    root = make_synthetic(base / "s2", seed=2, **SMALL)
    argv = ["train", "--config", "demo", "--dataset", "synthetic", "--data-root", str(root), "--output", str(base)]
    argv += ["--epochs", "1", "--set", "train.max_steps_per_epoch=2", "--set", "data.num_identities=4"]
    code, out, err = quiet(argv + ["--set", "data.num_instances=2", "--no-progress", "--no-eval"] + TINY)
    assert code == 0, err
    return str(base / "checkpoint.pth")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The synthetic set of seed 1, which the model never saw, in the three layouts."""
    base = tmp_path_factory.mktemp("layouts")
    return {
        layout: make_synthetic(base / layout, seed=1, layout=layout, **SMALL)
        for layout in ("market", "manifest", "folders")
    }


def test_three_layouts_give_identical_features_and_tables(checkpoint, layouts, tmp_path):
    roots = f"{layouts['market']},{layouts['manifest'] / 'manifest.csv'},{layouts['folders']}"
    output = tmp_path / "results.json"
    argv = ["eval", "--checkpoint", checkpoint, "--dataset", "synthetic,manifest,folders", "--data-root", roots]
    code, printed, err = quiet(argv + ["--output", str(output)] + TINY)
    assert code == 0, err
    targets = json.loads(output.read_text())["targets"]
    assert [t["dataset"] for t in targets] == ["synthetic", "manifest", "folders"]
    assert [t["trained_on"] for t in targets] == [False, False, False]
    assert targets[0]["results"] == targets[1]["results"] == targets[2]["results"]
    assert all(t["queries"] == {"valid": 12, "total": 12} for t in targets)
    for number, name in enumerate(("synthetic", "manifest", "folders"), 1):
        assert f"target {number}/3: {name} at " in printed
    assert printed.count("valid queries: 12 of 12") == 3
    # The features themselves, bit for bit.
    from scstn_vcn.engine.evaluator import extract_query_gallery
    from scstn_vcn.engine.model_file import build_inference_model, open_model_source

    source = open_model_source(checkpoint)
    config = source.config
    config["eval"]["workers"] = 0
    model = build_inference_model(source, config)
    feats = []
    for name, root in (("synthetic", "market"), ("manifest", "manifest"), ("folders", "folders")):
        query, gallery = extract_query_gallery(model, build_dataset(name, layouts[root]), config, torch.device("cpu"))
        feats.append((query, gallery))
    for query, gallery in feats[1:]:
        for ours, theirs in zip((query, gallery), feats[0]):
            assert all(torch.equal(ours["feats"][k], theirs["feats"][k]) for k in ("global", "spatial"))
            assert np.array_equal(ours["pids"], theirs["pids"]) and np.array_equal(ours["camids"], theirs["camids"])


def test_the_training_set_is_recognised_in_another_layout(checkpoint, tmp_path):
    # The model records its training split's fingerprint (no path): the same images as a folder per
    # identity, elsewhere, are known as its training set; the set of another seed is not.
    same = make_synthetic(tmp_path / "s2-folders", seed=2, layout="folders", **SMALL)
    other = make_synthetic(tmp_path / "s3", seed=3, **SMALL)
    argv = ["eval", "--checkpoint", checkpoint, "--dataset", "folders,synthetic", "--data-root", f"{same},{other}"]
    code, printed, err = quiet(argv + ["--output", str(tmp_path / "r.json")] + TINY)
    assert code == 0, err
    targets = json.loads((tmp_path / "r.json").read_text())["targets"]
    assert [t["trained_on"] for t in targets] == [True, False]
    assert f"folders at {same} (one of the training sets)" in printed
    assert f"synthetic at {other} (not one of the training sets)" in printed


@pytest.fixture
def partial_gallery(tmp_path):
    """The synthetic set of seed 7 as a folder per identity, with the gallery folders of two query
    identities removed: their four queries have no match."""
    root = make_synthetic(tmp_path / "s7", seed=7, layout="folders", **SMALL)
    query_ids = sorted(p.name for p in (root / "query").iterdir())
    for name in query_ids[:2]:
        shutil.rmtree(root / "gallery" / name)
    return root


def test_queries_without_a_match_are_counted_not_an_error(checkpoint, partial_gallery, tmp_path):
    output = tmp_path / "results.json"
    argv = ["eval", "--checkpoint", checkpoint, "--dataset", "folders", "--data-root", str(partial_gallery)]
    code, printed, err = quiet(argv + ["--output", str(output)] + TINY)
    assert code == 0, err
    assert f"note: folders at {partial_gallery}: 4 of 12 queries (2 identities" in printed
    assert "valid queries: 8 of 12" in printed
    assert "(valid queries: 8 of 12: the others have no match in the gallery from another camera)" in printed
    saved = json.loads(output.read_text())
    assert saved["queries"] == {"valid": 8, "total": 12} and saved["targets"][0]["trained_on"] is False

    # Reference: the dense fused distance of the same features, ranked for the valid queries only.
    from scstn_vcn.engine.evaluator import extract_query_gallery
    from scstn_vcn.engine.model_file import build_inference_model, open_model_source

    source = open_model_source(checkpoint)
    source.config["eval"]["workers"] = 0
    model = build_inference_model(source, source.config)
    data = build_dataset("folders", partial_gallery)
    query, gallery = extract_query_gallery(model, data, source.config, torch.device("cpu"))
    dist = sum(cosine_distance(query["feats"][k].double(), gallery["feats"][k].double()) for k in ("global", "spatial"))
    valid = np.isin(query["pids"], gallery["pids"])
    assert valid.sum() == 8
    ref = evaluate_rank_full(
        dist[valid].numpy(), query["pids"][valid], gallery["pids"], query["camids"][valid], gallery["camids"]
    )
    assert saved["results"]["fusion"]["mAP"] == pytest.approx(100 * ref["mAP"], abs=0.006)
    assert saved["results"]["fusion"]["rank1"] == pytest.approx(100 * ref["cmc"][0], abs=0.006)

    # Asked to be strict, the reader refuses the set, naming an image of such a query.
    code, _, err = quiet(argv + ["--set", "data.strict_queries=true", "--output", str(output)] + TINY)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "4 of 12 queries" in err and f"image {partial_gallery}/query/" in err and "data.strict_queries is on" in err


def test_no_valid_query_at_all_is_one_clear_error(checkpoint, partial_gallery, tmp_path):
    for folder in (partial_gallery / "query").iterdir():
        shutil.rmtree(partial_gallery / "gallery" / folder.name, ignore_errors=True)
    argv = ["eval", "--checkpoint", checkpoint, "--dataset", "folders", "--data-root", str(partial_gallery)]
    code, _, err = quiet(argv + ["--output", str(tmp_path / "r.json")] + TINY)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"folders at {partial_gallery}: no query has a valid match in the gallery (12 queries)" in err
    assert "no query identity appears in the gallery" in err and not (tmp_path / "r.json").exists()


def test_a_target_without_query_and_gallery_is_refused(checkpoint, layouts, tmp_path):
    manifest = tmp_path / "train_only.csv"
    lines = (layouts["manifest"] / "manifest.csv").read_text().splitlines()
    rows = [line for line in lines[1:] if line.endswith(",train")]
    rebased = [f"{layouts['manifest']}/{row}" for row in rows]
    manifest.write_text("\n".join([lines[0]] + rebased) + "\n")
    argv = ["eval", "--checkpoint", checkpoint, "--dataset", "manifest", "--data-root", str(manifest)]
    code, _, err = quiet(argv + TINY)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"the query split of {manifest} (lines with split=query) is empty" in err and "evaluating on manifest" in err
