"""The `scstn-vcn` command line, end to end at a tiny size (through scstn_vcn.cli.main)."""

import json

import numpy as np
import pytest
import torch

from scstn_vcn.cli import main

TPR_KEYS = ("TPR@FPR=1e-4", "TPR@FPR=1e-3", "TPR@FPR=1e-2")  # eval.fprs' default (scstn_vcn.metrics.verification)
TINY = [
    "--set",
    "data.height=64",
    "--set",
    "data.width=32",
    "--set",
    "data.num_identities=4",
    "--set",
    "data.num_instances=2",
    "--set",
    "train.max_steps_per_epoch=2",
    "--set",
    "eval.batch_size=32",
    "--set",
    "data.workers=0",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One tiny demo: synthesises 8 identities, trains 2 short epochs, evaluates, draws the figures."""
    out = tmp_path_factory.mktemp("demo")
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--output", str(out), "--num-identities", "8", "--epochs", "2", "--no-progress"] + TINY)
    return code, stdout.getvalue(), out


def test_demo_prints_the_table_and_writes_the_figures(demo_run):
    code, printed, out = demo_run
    assert code == 0
    assert "ops backend 'eager'" in printed
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("branch"))
    assert lines[header].split() == ["branch", "rank-1", "mAP"]
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[header + 2 : header + 5]}
    assert set(rows) == {"global", "spatial", "fusion"}
    assert all(0.0 <= v <= 100.0 for values in rows.values() for v in values)
    for name in ("training_curves", "ranked_lists", "alignment", "heatmaps"):
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    results = json.loads((out / "run" / "results.json").read_text())
    assert results["results"]["fusion"]["rank1"] == rows["fusion"][0]
    assert (out / "run" / "checkpoint.pth").is_file() and (out / "run" / "log.csv").is_file()
    assert (out / "data" / "synthetic.json").is_file()


def test_demo_names_what_its_numbers_depend_on(demo_run, tmp_path):
    from scstn_vcn.commands.demo import data_digest

    _, printed, out = demo_run
    line = next(line for line in printed.splitlines() if line.startswith("these numbers repeat for:"))
    count, digest = data_digest(str(out / "data"))
    results = json.loads((out / "run" / "results.json").read_text())
    assert f"data {count} images sha256 {digest[:12]}" in line and f"torch {torch.__version__}" in line
    assert results["data_sha256"] == digest and results["data_images"] == count > 0
    assert results["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and results["threads"] == 1
    # The digest covers names and bytes.
    (tmp_path / "a.jpg").write_bytes(b"1")
    first = data_digest(str(tmp_path))
    (tmp_path / "a.jpg").write_bytes(b"2")
    second = data_digest(str(tmp_path))
    (tmp_path / "a.jpg").rename(tmp_path / "b.jpg")
    assert len({first, second, data_digest(str(tmp_path))}) == 3


def test_eval_prints_all_metrics_and_writes_json(demo_run, tmp_path, capsys):
    _, _, out = demo_run
    target = tmp_path / "res.json"
    # How to run it comes from the flags: the checkpoint defines the model, not where the data is.
    data = ["--data-root", str(out / "data"), "--workers", "0"]
    code = main(["eval", "--checkpoint", str(out / "run" / "checkpoint.pth"), "--output", str(target), *data])
    assert code == 0
    printed = capsys.readouterr().out
    assert "rank-1   rank-5  rank-10      mAP     mINP" in printed
    results = json.loads(target.read_text())["results"]
    assert set(results) == {"global", "spatial", "fusion"}
    assert set(results["fusion"]) == {"rank1", "rank5", "rank10", "mAP", "mINP", *TPR_KEYS}
    # The same checkpoint and data give the numbers the demo printed after training.
    demo = json.loads((out / "run" / "results.json").read_text())["results"]
    assert results == demo


def test_export_npz(demo_run, tmp_path):
    _, _, out = demo_run
    target = tmp_path / "feats.npz"
    assert (
        main(
            ["export", "--checkpoint", str(out / "run" / "checkpoint.pth"), "--format", "npz", "--output", str(target)]
            + ["--data-root", str(out / "data"), "--workers", "0"]
        )
        == 0
    )
    data = np.load(target)
    assert data["query_global"].shape[0] == data["query_pids"].shape[0] == data["query_paths"].shape[0]
    assert data["gallery_spatial"].shape[1] == 6 * data["gallery_global"].shape[1]  # C*K with K = 6
    assert str(data["query_paths"][0]).endswith(".jpg")


def test_export_onnx_or_clear_error(demo_run, tmp_path, capsys):
    _, _, out = demo_run
    target = tmp_path / "model.onnx"
    args = ["export", "--checkpoint", str(out / "run" / "checkpoint.pth"), "--format", "onnx", "--output", str(target)]
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        assert main(args) == 2
        assert "pip install onnx onnxscript" in capsys.readouterr().err
        return
    assert main(args) == 0
    model = onnx.load(str(target))
    assert [o.name for o in model.graph.output] == ["global", "spatial"]
    from onnx.reference import ReferenceEvaluator

    images = np.random.default_rng(0).standard_normal((3, 3, 64, 32)).astype(np.float32)  # batch 3: dynamic
    got = ReferenceEvaluator(str(target)).run(None, {"images": images})
    from scstn_vcn.engine.builders import build_model_from_config
    from scstn_vcn.engine.checkpoint import load_checkpoint, load_model_weights

    state = load_checkpoint(out / "run" / "checkpoint.pth")
    net = build_model_from_config(state["config"], state["identity"]["num_classes"], pretrained=False)
    load_model_weights("x", state, net)
    with torch.no_grad():
        want = net.eval()(torch.from_numpy(images))
    np.testing.assert_allclose(got[0], want["global"].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1], want["spatial"].numpy(), rtol=1e-4, atol=1e-5)


def test_onnx_without_onnx_installed_says_what_to_install(demo_run, tmp_path, capsys, monkeypatch):
    _, _, out = demo_run
    monkeypatch.setitem(__import__("sys").modules, "onnxscript", None)  # makes `import onnxscript` fail
    err = _error(
        capsys,
        [
            "export",
            "--checkpoint",
            str(out / "run" / "checkpoint.pth"),
            "--format",
            "onnx",
            "--output",
            str(tmp_path / "m.onnx"),
        ],
    )
    assert "pip install onnx onnxscript" in err
    assert not (tmp_path / "m.onnx").exists()


def test_visualize_writes_pngs(demo_run, tmp_path, capsys):
    _, _, out = demo_run
    folder = tmp_path / "figs"
    assert (
        main(
            [
                "visualize",
                "--checkpoint",
                str(out / "run" / "checkpoint.pth"),
                "--output",
                str(folder),
                "--num-queries",
                "2",
                "--topk",
                "3",
                "--data-root",
                str(out / "data"),
                "--workers",
                "0",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        "alignment.png",
        "heatmaps.png",
        "ranked_lists.png",
        "training_curves.png",
    ]
    assert main(["visualize", "--what", "curves,bogus", "--log", str(out / "run" / "log.csv")]) == 2
    assert "unknown figure(s) bogus" in capsys.readouterr().err


def test_make_synthetic(tmp_path, capsys):
    root = tmp_path / "syn"
    assert (
        main(
            [
                "make-synthetic",
                str(root),
                "--num-identities",
                "4",
                "--num-distractors",
                "1",
                "--num-junk",
                "1",
                "--images-per-identity",
                "2",
                "--gallery-per-identity",
                "2",
                "--query-per-identity",
                "1",
            ]
        )
        == 0
    )
    assert (root / "bounding_box_train").is_dir() and (root / "query").is_dir()


# ------------------------------------------------------------------------------- bad input


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_missing_data_root_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    err = _error(capsys, ["train", "--config", "demo", "--data-root", str(missing), "--output", str(tmp_path / "r")])
    assert str(missing) in err


def test_data_root_of_the_wrong_layout(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _error(
        capsys,
        [
            "train",
            "--config",
            "r50o_market1501",
            "--data-root",
            str(tmp_path / "empty"),
            "--output",
            str(tmp_path / "r"),
        ],
    )
    assert "market1501" in err and "bounding_box_train" in err


def test_missing_and_foreign_checkpoints(demo_run, tmp_path, capsys):
    _, _, out = demo_run
    err = _error(capsys, ["eval", "--checkpoint", str(tmp_path / "none.pth"), "--data-root", str(out / "data")])
    assert f"{tmp_path / 'none.pth'}: no such file" in err
    checkpoint = str(out / "run" / "checkpoint.pth")
    err = _error(capsys, ["eval", "--checkpoint", checkpoint, "--config", "demo", "--data-root", str(out / "data")])
    # The demo preset's 128x64 input is not the tiny run's 64x32.
    assert f"checkpoint {checkpoint} is of another configuration" in err and "input_size" in err
    err = _error(capsys, ["train", "--resume", checkpoint, "--set", "model.variant=M", "--output", str(tmp_path / "r")])
    assert "variant: checkpoint has 'O', this run expects 'M'" in err


def test_unavailable_backend_fails_instead_of_falling_back(demo_run, tmp_path, capsys, monkeypatch):
    _, _, out = demo_run
    # tests/conftest.py may run Triton in its interpreter; an ordinary CPU run cannot.
    monkeypatch.setattr("scstn_vcn.ops._backend.triton_interpreting", lambda: False)
    err = _error(
        capsys,
        [
            "train",
            "--config",
            "demo",
            "--data-root",
            str(out / "data"),
            "--fused",
            "--kernels",
            "triton",
            "--output",
            str(tmp_path / "r"),
        ]
        + TINY,
    )
    assert "'triton' backend on cpu, which is not available" in err
    assert not (tmp_path / "r" / "checkpoint.pth").exists()


def test_fused_cpu_training_uses_native(demo_run, tmp_path, capsys):
    from scstn_vcn import ops

    _, _, out = demo_run
    argv = [
        "train",
        "--config",
        "demo",
        "--data-root",
        str(out / "data"),
        "--fused",
        "--epochs",
        "1",
        "--output",
        str(tmp_path / "r"),
        "--no-eval",
        "--no-progress",
    ] + TINY
    try:
        if not ops.backend_status("native", "cpu")[0]:
            err = _error(capsys, argv)
            assert "'native' backend on cpu" in err
            return
        assert main(argv) == 0
        assert "ops backend 'native'" in capsys.readouterr().out
    finally:
        ops.set_backend("eager")


# ------------------------------------------------------------------------------- extract and search


def test_extract_from_a_folder_a_glob_and_a_list(demo_run, tmp_path):
    import os

    from scstn_vcn import FeatureExtractor

    _, _, out = demo_run
    checkpoint = str(out / "run" / "checkpoint.pth")
    folder = out / "data" / "query"
    target = tmp_path / "feats.npz"
    assert (
        main(["extract", "--checkpoint", checkpoint, "--images", str(folder), "--output", str(target), "--no-progress"])
        == 0
    )
    data = np.load(target)
    assert set(data.files) == {"paths", "global", "spatial"}
    paths = [str(p) for p in data["paths"]]
    assert paths == sorted(str(p) for p in folder.iterdir())
    expected = FeatureExtractor(checkpoint, device="cpu")(paths)
    for name in ("global", "spatial"):
        assert data[name].dtype == np.float32 and data[name].shape[0] == len(paths)
        assert np.array_equal(data[name], expected[name].numpy()), name

    pattern = str(folder / "*.jpg")
    assert (
        main(
            [
                "extract",
                "--checkpoint",
                checkpoint,
                "--images",
                pattern,
                "--output",
                str(target),
                "--no-progress",
                "--batch-size",
                "5",
            ]
        )
        == 0
    )
    assert [str(p) for p in np.load(target)["paths"]] == paths

    listed = [paths[2], paths[0]]
    (tmp_path / "list.txt").write_text("# two queries\n" + "\n".join(listed) + "\n\n")
    assert (
        main(
            [
                "extract",
                "--checkpoint",
                checkpoint,
                "--images",
                str(tmp_path / "list.txt"),
                "--output",
                str(target),
                "--no-progress",
            ]
        )
        == 0
    )
    data = np.load(target)
    assert [str(p) for p in data["paths"]] == listed
    assert np.array_equal(data["global"][1], expected["global"][0].numpy())
    assert sorted(os.listdir(tmp_path)) == ["feats.npz", "list.txt"]  # no temporary file left


def test_extract_bad_images_are_one_line_errors(demo_run, tmp_path, capsys):
    import os
    import shutil

    _, _, out = demo_run
    checkpoint = str(out / "run" / "checkpoint.pth")
    images = tmp_path / "images"
    images.mkdir()
    for source in sorted((out / "data" / "query").iterdir())[:2]:
        shutil.copy(source, images)
    (images / "zz_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    target = tmp_path / "feats.npz"
    err = _error(
        capsys,
        ["extract", "--checkpoint", checkpoint, "--images", str(images), "--output", str(target), "--no-progress"],
    )
    assert "zz_broken.jpg" in err
    assert sorted(os.listdir(tmp_path)) == ["images"]  # nothing (half-)written
    err = _error(
        capsys, ["extract", "--checkpoint", checkpoint, "--images", str(tmp_path / "none"), "--output", str(target)]
    )
    assert "--images" in err and "none" in err
    (images / "zz_broken.jpg").unlink()
    (tmp_path / "list.txt").write_text("images/missing.jpg\n")
    err = _error(
        capsys, ["extract", "--checkpoint", checkpoint, "--images", str(tmp_path / "list.txt"), "--output", str(target)]
    )
    assert "line 1: no such image file" in err and "missing.jpg" in err


def test_search_prints_and_draws_the_top_k(demo_run, tmp_path, capsys):
    import os

    _, _, out = demo_run
    checkpoint = str(out / "run" / "checkpoint.pth")
    query = str(sorted((out / "data" / "query").iterdir())[0])
    target = tmp_path / "ranked.png"
    assert (
        main(
            [
                "search",
                "--checkpoint",
                checkpoint,
                "--query",
                query,
                "--gallery",
                str(out / "data" / "bounding_box_test"),
                "--topk",
                "5",
                "--output",
                str(target),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line[:4].strip().isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
    distances = [float(r[1]) for r in rows]
    assert distances == sorted(distances) and all(0.0 <= d <= 4.0 for d in distances)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["ranked.png"]
    err = _error(
        capsys,
        [
            "search",
            "--checkpoint",
            checkpoint,
            "--query",
            str(tmp_path / "q.jpg"),
            "--gallery",
            str(out / "data" / "bounding_box_test"),
            "--output",
            str(target),
        ],
    )
    assert "--query" in err and "q.jpg" in err
