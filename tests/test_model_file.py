"""Model files (`scstn-vcn export --format safetensors`): what they hold, and that every command and the
FeatureExtractor give the same features from one as from the training checkpoint it came from."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open

import scstn_vcn
from scstn_vcn.cli import main
from scstn_vcn.configs import load_config, model_identity, model_settings
from scstn_vcn.engine import checkpoint as ckpt
from scstn_vcn.engine import model_file


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small synthetic set, a checkpoint of the demo model (random weights and BN statistics, Adam moments
    after one step) and its model file exported through the CLI. No training: the files are what matters."""
    from scstn_vcn.data import build_dataset, make_synthetic
    from scstn_vcn.engine.builders import build_model_from_config
    from scstn_vcn.engine.optim import build_optimizer, build_scheduler
    from scstn_vcn.engine.seed import get_rng_state

    base = tmp_path_factory.mktemp("model_file")
    root = make_synthetic(
        base / "data",
        num_identities=6,
        seed=0,
        images_per_identity=3,
        gallery_per_identity=2,
        query_per_identity=1,
        num_distractors=1,
        num_junk=1,
    )
    overrides = [
        ("data.root", str(root)),
        ("data.height", 64),
        ("data.width", 32),
        ("data.workers", 0),
        ("eval.workers", 0),
        ("eval.batch_size", 16),
        ("train.device", "cpu"),
        ("train.output", str(base / "run")),
    ]
    config = load_config("demo", [(key.split("."), value) for key, value in overrides])
    dataset = build_dataset("synthetic", str(root))
    torch.manual_seed(0)
    model = build_model_from_config(config, dataset.num_train_pids, pretrained=False)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    optimizer = build_optimizer(model, config["optim"])
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    optimizer.step()
    checkpoint = base / "run" / "checkpoint.pth"
    ckpt.save_checkpoint(
        checkpoint,
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config["optim"]),
        epoch=3,
        config=config,
        identity=model_identity(config, dataset.num_train_pids),
        rng_state=[get_rng_state()],
    )
    exported = base / "model.safetensors"
    code, _, err = _quiet(
        ["export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--output", str(exported)]
    )
    assert code == 0, err
    return {
        "base": base,
        "root": root,
        "config": config,
        "dataset": dataset,
        "checkpoint": checkpoint,
        "model_file": exported,
        "model": model.eval(),
    }


def _quiet(argv):
    """(exit code, stdout, stderr) of the CLI."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_model_file_holds_the_inference_weights_and_the_configuration(run):
    model = run["model"]
    classifiers = model_file.classifier_keys(model)
    assert classifiers and all(".classifier." in key for key in classifiers)
    with safe_open(str(run["model_file"]), framework="pt") as handle:
        metadata = handle.metadata()
        keys = set(handle.keys())
        for key in keys:
            assert torch.equal(handle.get_tensor(key), model.state_dict()[key]), key
    assert keys == set(model.state_dict()) - classifiers  # no classifiers, no optimizer, no RNG
    assert metadata["format"] == "scstn-vcn-model" and metadata["format_version"] == "1"
    assert metadata["classifiers"] == "false" and metadata["epoch"] == "3"
    assert metadata["scstn_vcn"] == scstn_vcn.__version__
    # The model's settings only: never the author's folders, threads, workers or evaluation settings.
    assert json.loads(metadata["config"]) == model_settings(run["config"])
    assert json.loads(metadata["identity"]) == model_identity(run["config"], run["dataset"].num_train_pids)
    # The checkpoint also holds the classifiers and Adam's two moments per parameter.
    assert os.path.getsize(run["model_file"]) < os.path.getsize(run["checkpoint"]) / 2.5
    assert sorted(os.listdir(run["base"])) == ["data", "model.safetensors", "run"]  # no temporary file left


def test_with_classifiers_and_re_export(run, tmp_path):
    full = tmp_path / "full.safetensors"
    assert (
        _quiet(
            [
                "export",
                "--checkpoint",
                str(run["checkpoint"]),
                "--format",
                "safetensors",
                "--output",
                str(full),
                "--with-classifiers",
            ]
        )[0]
        == 0
    )
    with safe_open(str(full), framework="pt") as handle:
        assert set(handle.keys()) == set(run["model"].state_dict()) and handle.metadata()["classifiers"] == "true"
    source = model_file.open_model_source(full)
    assert source.kind == "model file" and source.has_classifiers
    assert model_file.classifier_keys(model_file.build_inference_model(source))
    # A model file exports again (to another format, or to safetensors) but has no classifiers to add.
    again = tmp_path / "again.safetensors"
    assert (
        _quiet(["export", "--checkpoint", str(run["model_file"]), "--format", "safetensors", "--output", str(again)])[0]
        == 0
    )
    with safe_open(str(again), framework="pt") as a, safe_open(str(run["model_file"]), framework="pt") as b:
        assert set(a.keys()) == set(b.keys()) and all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
    code, _, err = _quiet(
        [
            "export",
            "--checkpoint",
            str(run["model_file"]),
            "--format",
            "safetensors",
            "--output",
            str(tmp_path / "x.safetensors"),
            "--with-classifiers",
        ]
    )
    assert code == 2 and "no ID classifiers" in err
    code, _, err = _quiet(
        [
            "export",
            "--checkpoint",
            str(run["checkpoint"]),
            "--format",
            "npz",
            "--output",
            str(tmp_path / "x.npz"),
            "--with-classifiers",
        ]
    )
    assert code == 2 and "--with-classifiers only applies to --format safetensors" in err


def test_feature_extractor_gives_identical_features_from_both(run):
    paths = [item[0] for item in run["dataset"].query + run["dataset"].gallery]
    from_checkpoint = scstn_vcn.FeatureExtractor(run["checkpoint"], device="cpu", batch_size=8)
    from_file = scstn_vcn.FeatureExtractor(run["model_file"], device="cpu", batch_size=8)
    assert from_file.config == from_checkpoint.config and from_file.input_size == (64, 32)
    a, b = from_checkpoint(paths), from_file(paths)
    assert set(a) == set(b) == {"global", "spatial"}
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_model_file_by_content_whatever_its_name(run, tmp_path):
    renamed = tmp_path / "model.pth"
    renamed.write_bytes(run["model_file"].read_bytes())
    assert model_file.open_model_source(renamed).kind == "model file"
    # ... and a training checkpoint named .safetensors is still read as one.
    misnamed = tmp_path / "checkpoint.safetensors"
    misnamed.write_bytes(run["checkpoint"].read_bytes())
    assert model_file.open_model_source(misnamed).kind == "checkpoint"


def test_resume_from_a_model_file_is_refused_with_the_reason(run):
    with pytest.raises(ckpt.CheckpointError, match="is a safetensors model file.*training checkpoint"):
        ckpt.load_checkpoint(run["model_file"])


def _npz(path):
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def test_commands_give_identical_results_from_both(run, tmp_path, capsys):
    root = str(run["root"])
    sources = {"checkpoint": str(run["checkpoint"]), "model file": str(run["model_file"])}
    outputs = {}
    for label, source in sources.items():
        folder = tmp_path / label.replace(" ", "_")
        data = ["--data-root", root, "--workers", "0"]  # the recipient's: neither file says where the data is
        code, eval_out, err = _quiet(["eval", "--checkpoint", source, "--output", str(folder / "results.json"), *data])
        assert code == 0, err
        assert f"from {label} {source}" in eval_out
        npz = ["export", "--checkpoint", source, "--format", "npz", "--output", str(folder / "f.npz"), *data]
        assert _quiet(npz)[0] == 0
        assert (
            _quiet(
                [
                    "extract",
                    "--checkpoint",
                    source,
                    "--images",
                    os.path.join(root, "query"),
                    "--output",
                    str(folder / "x.npz"),
                    "--no-progress",
                    "--device",
                    "cpu",
                ]
            )[0]
            == 0
        )
        query = run["dataset"].query[0][0]
        code, search_out, err = _quiet(
            [
                "search",
                "--checkpoint",
                source,
                "--query",
                query,
                "--gallery",
                os.path.join(root, "bounding_box_test"),
                "--topk",
                "5",
                "--no-progress",
                "--device",
                "cpu",
                "--output",
                str(folder / "ranked.png"),
            ]
        )
        assert code == 0, err
        assert (
            _quiet(
                ["visualize", "--checkpoint", source, "--what", "ranked,alignment", "--output", str(folder / "figures")]
                + data
            )[0]
            == 0
        )
        results = json.loads((folder / "results.json").read_text())
        outputs[label] = {
            "results": results["results"],
            "features": _npz(folder / "f.npz"),
            "extract": _npz(folder / "x.npz"),
            "search": [line for line in search_out.splitlines() if line.startswith(" ")],
            "figures": sorted(os.listdir(folder / "figures")),
        }
    a, b = outputs["checkpoint"], outputs["model file"]
    assert a["results"] == b["results"]
    assert a["search"] == b["search"] and len(a["search"]) == 5
    assert a["figures"] == b["figures"] == ["alignment.png", "ranked_lists.png"]
    for kind in ("features", "extract"):
        assert a[kind].keys() == b[kind].keys()
        for key in a[kind]:
            assert np.array_equal(a[kind][key], b[kind][key]), (kind, key)
