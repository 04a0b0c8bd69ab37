"""Bad and hostile model files: a pickle that would run code is refused without running it, through every way
in (library, FeatureExtractor, the CLI), and a broken or mismatched .safetensors file is refused with one line
naming the file and what was expected, before anything is loaded into a model."""

import builtins
import json
import os
import pickle
import shlex

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import scstn_vcn
from scstn_vcn.cli import main
from scstn_vcn.configs import load_config, model_identity
from scstn_vcn.engine import checkpoint as ckpt
from scstn_vcn.engine import model_file


class _RunsCode:
    """Unpickling this object calls exec(): it writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",)


class _RunsCommand(_RunsCode):
    """Unpickling this object runs a shell command (os.system) that creates the marker file."""

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def _write_hostile(kind, path, marker):
    if kind == "torch.save":  # a checkpoint-looking zip archive, the payload among the weights
        torch.save({"format": ckpt.FORMAT, "version": ckpt.VERSION, "model": {"w": _RunsCode(marker)}}, path)
    elif kind == "shell command":
        if os.name != "posix":
            pytest.skip("the payload is a POSIX shell command")
        torch.save({"format": ckpt.FORMAT, "version": ckpt.VERSION, "epoch": _RunsCommand(marker)}, path)
    elif kind == "version 1 tag":  # claims to be a version-1 checkpoint, which must not earn it a conversion hint
        torch.save({"format": ckpt.FORMAT, "version": 1, "rng": [_RunsCode(marker)]}, path)
    elif kind == "raw pickle":  # torch's legacy (non-zip) layout: a bare pickle stream
        with open(path, "wb") as handle:
            pickle.dump(_RunsCode(marker), handle, protocol=2)
    else:
        raise AssertionError(kind)


HOSTILE_KINDS = ("torch.save", "shell command", "version 1 tag", "raw pickle")


@pytest.fixture(params=HOSTILE_KINDS)
def hostile(request, tmp_path):
    """(path of a .pth whose unpickling would create `marker`, marker)."""
    marker = tmp_path / "marker"
    path = tmp_path / "checkpoint.pth"
    _write_hostile(request.param, path, marker)
    assert not marker.exists()
    return path, marker


def _refused(message, path):
    assert str(path) in message and len(message.strip().splitlines()) == 1, message
    assert "--trust" not in message, message  # never an invitation to convert (unpickle) it


def test_library_refuses_a_pickle_that_runs_code(hostile):
    path, marker = hostile
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load_checkpoint(path)
    _refused(str(info.value), path)
    assert not marker.exists()


def test_feature_extractor_refuses_a_pickle_that_runs_code(hostile):
    path, marker = hostile
    with pytest.raises(ckpt.CheckpointError) as info:
        scstn_vcn.FeatureExtractor(path, device="cpu")
    _refused(str(info.value), path)
    assert not marker.exists()


def _cli_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "command", ["eval", "extract", "search", "export", "train --resume", "convert-checkpoint --trust"]
)
def test_cli_refuses_a_pickle_that_runs_code(hostile, command, tmp_path, capsys):
    path, marker = hostile
    image = tmp_path / "images" / "a.jpg"
    image.parent.mkdir()
    Image.new("RGB", (32, 64)).save(image)
    argv = {
        "eval": ["eval", "--checkpoint", str(path), "--data-root", str(tmp_path)],
        "extract": [
            "extract",
            "--checkpoint",
            str(path),
            "--images",
            str(image.parent),
            "--output",
            str(tmp_path / "f.npz"),
            "--device",
            "cpu",
        ],
        "search": [
            "search",
            "--checkpoint",
            str(path),
            "--query",
            str(image),
            "--gallery",
            str(image.parent),
            "--device",
            "cpu",
        ],
        "export": [
            "export",
            "--checkpoint",
            str(path),
            "--format",
            "safetensors",
            "--output",
            str(tmp_path / "m.safetensors"),
        ],
        "train --resume": ["train", "--resume", str(path), "--output", str(tmp_path / "run")],
        "convert-checkpoint --trust": ["convert-checkpoint", str(path), str(tmp_path / "new.pth"), "--trust"],
    }[command]
    err = _cli_error(capsys, argv)
    _refused(err, path)
    assert "refused" in err
    assert not marker.exists()
    assert not (tmp_path / "new.pth").exists() and not (tmp_path / "m.safetensors").exists()


# ------------------------------------------------------------------------------ .safetensors files


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """(tensors, metadata, model) of a valid model file of the tiny demo model at 64 x 32."""
    from safetensors import safe_open

    from scstn_vcn.engine.builders import build_model_from_config

    config = load_config("demo", [(["data", "height"], 64), (["data", "width"], 32)])
    torch.manual_seed(0)
    model = build_model_from_config(config, 5, pretrained=False)
    path = tmp_path_factory.mktemp("good") / "model.safetensors"
    model_file.save_model_file(path, model, config, model_identity(config, 5))
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    return tensors, metadata, path


def _other_configuration_weights(good):
    """The weights of the demo model as variant M (dilated: another feature-map size), under good's metadata."""
    from scstn_vcn.engine.builders import build_model_from_config

    config = load_config("demo", [(["data", "height"], 64), (["data", "width"], 32), (["model", "variant"], "M")])
    model = build_model_from_config(config, None, pretrained=False)
    return model.state_dict()


def _bad_files(good, folder):
    """{name: (path, a phrase the error must contain)}: each a way a .safetensors file can be wrong."""
    tensors, metadata, path = good
    raw = path.read_bytes()
    header = int.from_bytes(raw[:8], "little")
    files = {}

    def write_bytes(name, data, expect):
        target = folder / f"{name}.safetensors"
        target.write_bytes(data)
        files[name] = (target, expect)

    def write(name, expect, tensors=tensors, **changes):
        meta = {**metadata, **changes}
        meta = {k: v for k, v in meta.items() if v is not None}
        target = folder / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(target), metadata=meta or None)
        files[name] = (target, expect)

    write_bytes("truncated", raw[: len(raw) // 2], "not a readable safetensors file")
    write_bytes("header cut short", raw[:header], "not a readable safetensors file")
    write_bytes("header length too large", (header + 64).to_bytes(8, "little") + raw[8:], "not a readable safetensors")
    write_bytes("header length too small", (header - 5).to_bytes(8, "little") + raw[8:], "not a readable safetensors")
    write_bytes("header length beyond the file", (2**40).to_bytes(8, "little") + raw[8:], "not a readable safetensors")
    write_bytes("empty", b"", "not a readable safetensors file")
    write(
        "no metadata",
        "no scstn-vcn metadata",
        format=None,
        format_version=None,
        config=None,
        identity=None,
        classifiers=None,
        epoch=None,
        scstn_vcn=None,
    )
    write("foreign format", "format 'pt', expected 'scstn-vcn-model'", format="pt")
    write("future version", "format version '2', this scstn-vcn reads version 1", format_version="2")
    write("config not JSON", "'config' metadata is not valid JSON", config="{model: O")
    write("config a list", "'config' metadata is a JSON list", config="[]")
    write("no identity", "no 'identity' entry", identity=None)
    bad_config = json.loads(metadata["config"])
    bad_config["model"]["variant"] = "X"
    write(
        "invalid config",
        "saved configuration is not valid (model.variant must be 'O' or 'M'",
        config=json.dumps(bad_config),
    )
    identity = json.loads(metadata["identity"])
    write(
        "identity of another model",
        "is of another configuration (variant: model file has 'M'",
        identity=json.dumps({**identity, "variant": "M"}),
    )
    write(
        "identity without classes",
        "no positive integer num_classes",
        identity=json.dumps({**identity, "num_classes": 0}),
    )
    write("bad classifiers flag", "'classifiers' metadata is 'maybe'", classifiers="maybe")
    write("classifiers claimed", "missing", classifiers="true")  # the file says so, but holds none
    write(
        "weights of another configuration",
        "do not fit the model being built (shape",
        tensors=_other_configuration_weights(good),
    )
    write(
        "float64 weights",
        "dtype (file vs model)",
        tensors={k: v.double() if v.is_floating_point() else v for k, v in tensors.items()},
    )
    first = next(k for k, v in tensors.items() if v.dim() == 2)
    write("one wrong shape", f"shape (file vs model) {first}", tensors={**tensors, first: tensors[first].reshape(-1)})
    write("a missing tensor", "missing", tensors={k: v for k, v in tensors.items() if k != first})
    write("an extra tensor", "unexpected extra.weight", tensors={**tensors, "extra.weight": torch.zeros(3)})
    return files


BAD_NAMES = (
    "truncated",
    "header cut short",
    "header length too large",
    "header length too small",
    "header length beyond the file",
    "empty",
    "no metadata",
    "foreign format",
    "future version",
    "config not JSON",
    "config a list",
    "no identity",
    "invalid config",
    "identity of another model",
    "identity without classes",
    "bad classifiers flag",
    "classifiers claimed",
    "weights of another configuration",
    "float64 weights",
    "one wrong shape",
    "a missing tensor",
    "an extra tensor",
)


@pytest.fixture(scope="module")
def bad_files(good, tmp_path_factory):
    files = _bad_files(good, tmp_path_factory.mktemp("bad"))
    assert set(files) == set(BAD_NAMES)
    return files


def test_the_good_file_loads(good):
    model = model_file.build_inference_model(model_file.open_model_source(good[2]))
    assert set(model.state_dict()) == set(good[0])


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_bad_model_file_is_refused_before_loading(name, bad_files, monkeypatch):
    path, expect = bad_files[name]
    loads = []
    real = torch.nn.Module.load_state_dict
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", lambda *a, **k: loads.append(1) or real(*a, **k))
    with pytest.raises(ckpt.CheckpointError) as info:
        scstn_vcn.FeatureExtractor(path, device="cpu")
    message = str(info.value)
    assert str(path) in message and expect in message, message
    assert len(message.splitlines()) == 1, message
    assert not loads  # nothing went into a model


def test_a_model_file_of_another_configuration_is_refused_from_its_header(bad_files, monkeypatch):
    """Shapes that do not fit are found in the header: the tensors are never read."""
    path, _ = bad_files["weights of another configuration"]
    source = model_file.open_model_source(path)
    monkeypatch.setattr(source, "load", lambda: pytest.fail("the tensors were read"))
    with pytest.raises(ckpt.CheckpointError, match="shape"):
        model_file.build_inference_model(source)


def test_cli_names_a_bad_model_file_in_one_line(bad_files, tmp_path, capsys):
    path, _ = bad_files["truncated"]
    image = tmp_path / "a.jpg"
    Image.new("RGB", (32, 64)).save(image)
    err = _cli_error(
        capsys,
        [
            "extract",
            "--checkpoint",
            str(path),
            "--images",
            str(tmp_path),
            "--output",
            str(tmp_path / "f.npz"),
            "--device",
            "cpu",
        ],
    )
    assert f"model file {path}: not a readable safetensors file" in err and len(err.strip().splitlines()) == 1
    err = _cli_error(
        capsys, ["eval", "--checkpoint", str(bad_files["float64 weights"][0]), "--data-root", str(tmp_path)]
    )
    assert "dtype (file vs model)" in err and not (tmp_path / "f.npz").exists()


# ------------------------------------------------------------------------------ a file's runtime settings

# What an older (or a hostile) file's configuration may say about how to run it. None of it may reach the
# recipient's run: the file defines the model, the recipient's flags and the defaults say how it runs.
HOSTILE_SETTINGS = {
    ("eval", "rerank"): True,
    ("eval", "rerank_k1"): 10**9,  # N x N neighbour lists: about 70 GB at MSMT17
    ("eval", "workers"): 100000,  # as many forked processes
    ("eval", "batch_size"): 10**6,
    ("data", "workers"): 100000,
    ("train", "threads"): 100000,
    ("data", "root"): "/etc",
    ("train", "device"): "cuda:7",
    ("train", "fused"): True,
    ("train", "kernels"): "triton",
    ("train", "output"): "/etc/scstn",
}


def _hostile_config(config):
    saved = json.loads(json.dumps(config))
    for (section, key), value in HOSTILE_SETTINGS.items():
        saved[section][key] = value
    return saved


@pytest.fixture(scope="module")
def runtime_files(good, tmp_path_factory):
    """{kind: (clean path, hostile path)}: the good model's weights in a model file and in a training checkpoint,
    once with the model's own settings and once with HOSTILE_SETTINGS in the saved configuration (written as an
    older scstn-vcn wrote whole configurations)."""
    tensors, metadata, path = good
    folder = tmp_path_factory.mktemp("runtime")
    config = load_config("demo", [(["data", "height"], 64), (["data", "width"], 32)])
    hostile = folder / "hostile.safetensors"
    save_file(tensors, str(hostile), metadata={**metadata, "config": json.dumps(_hostile_config(config))})
    from scstn_vcn.engine.builders import build_model_from_config

    weights = build_model_from_config(config, 5, pretrained=False).state_dict()  # with its ID classifiers
    checkpoints = {}
    for name, saved in (("clean", config), ("hostile", _hostile_config(config))):
        checkpoints[name] = folder / f"{name}.pth"
        state = {"format": ckpt.FORMAT, "version": ckpt.VERSION, "epoch": 3, "model": weights, "config": saved}
        ckpt.atomic_torch_save({**state, "identity": model_identity(config, 5)}, checkpoints[name])
    return {
        "model file": (path, hostile),
        "checkpoint": (checkpoints["clean"], checkpoints["hostile"]),
    }


def _inference_args(command, path, *flags):
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(f"scstn_vcn.commands.{command}").add_arguments(parser)
    required = {"export": ["--format", "onnx", "--output", "m.onnx"]}
    return parser.parse_args(["--checkpoint", str(path), *required.get(command, []), *flags])


@pytest.mark.parametrize("kind", ["model file", "checkpoint"])
def test_a_files_runtime_settings_change_nothing_of_the_recipients_run(kind, runtime_files, monkeypatch):
    """eval / export / visualize load a model with the recipient's settings: the run from the hostile file is the
    run from the clean one, and that is the defaults; torch's thread count is left alone."""
    from scstn_vcn.commands._common import inference_config_and_model, load_model_for_inference
    from scstn_vcn.configs import DEFAULTS

    clean, hostile = runtime_files[kind]
    _, expected, _ = inference_config_and_model(_inference_args("eval", clean))
    for name in ("train", "eval"):
        assert expected[name] == DEFAULTS[name]
    assert expected["data"]["root"] is None and expected["data"]["workers"] == DEFAULTS["data"]["workers"]
    threads = torch.get_num_threads()
    for command in ("eval", "export", "visualize"):
        args = _inference_args(command, hostile)
        source, config, model = inference_config_and_model(args)
        assert config == expected, command
        assert source.config == config  # what the file is said to hold, too
        config, model, dataset, device = load_model_for_inference(args, need_data=False)
        assert config == expected and device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
        assert torch.get_num_threads() == threads
    # The recipient's own flags still apply.
    args = _inference_args("eval", hostile, "--workers", "1", "--set", "eval.rerank=true", "--device", "cpu")
    _, config, _ = inference_config_and_model(args)
    assert config["eval"]["workers"] == config["data"]["workers"] == 1
    assert config["eval"]["rerank"] is True and config["eval"]["rerank_k1"] == DEFAULTS["eval"]["rerank_k1"]


@pytest.mark.parametrize("kind", ["model file", "checkpoint"])
def test_a_files_runtime_settings_do_not_reach_the_feature_extractor(kind, runtime_files):
    clean, hostile = runtime_files[kind]
    threads = torch.get_num_threads()
    images = torch.randn(3, 3, 64, 32)
    reference = scstn_vcn.FeatureExtractor(clean, device="cpu", batch_size=2)
    extractor = scstn_vcn.FeatureExtractor(hostile, device="cpu", batch_size=2)
    assert extractor.config == reference.config and extractor.device == torch.device("cpu")
    assert extractor.backend is None and extractor.batch_size == 2
    assert torch.get_num_threads() == threads
    features, expected = extractor(images), reference(images)
    assert all(torch.equal(features[name], expected[name]) for name in expected)


def test_export_writes_no_runtime_settings(runtime_files, tmp_path, capsys):
    """A model file exported from a hostile (or any) file carries the model's settings only."""
    from safetensors import safe_open

    from scstn_vcn.configs import MODEL_SETTINGS

    for kind, (_, hostile) in runtime_files.items():
        out = tmp_path / f"{kind.replace(' ', '_')}.safetensors"
        assert main(["export", "--checkpoint", str(hostile), "--format", "safetensors", "--output", str(out)]) == 0
        with safe_open(str(out), framework="pt") as handle:
            saved = json.loads(handle.metadata()["config"])
        assert {section: set(values) for section, values in saved.items()} == {
            section: set(keys) for section, keys in MODEL_SETTINGS.items()
        }
        assert "/etc" not in json.dumps(saved)


def test_resuming_a_checkpoint_validates_its_runtime_settings(runtime_files, capsys):
    """train --resume keeps the checkpoint's training recipe (the user's own run) but not an unchecked runtime
    setting: the first bad one is named, with the file it came from."""
    _, hostile = runtime_files["checkpoint"]
    err = _cli_error(capsys, ["train", "--resume", str(hostile)])
    assert "train.threads must be an integer from 0 to" in err and f"(from checkpoint {hostile})" in err, err
