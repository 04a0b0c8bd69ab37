"""Runtime settings (threads, workers, batch and chunk sizes, the device, folders, re-ranking and query expansion)
are checked in one place, configs.validate_runtime, whatever their source (the defaults, a preset, --set, a
saved configuration), and a bad one is one ConfigError naming the key, what was expected and the source."""

import pytest
import torch
import yaml

from scstn_vcn import configs
from scstn_vcn.configs import ConfigError, config_from_model, config_from_saved, load_config
from scstn_vcn.engine.runtime import resolve_device

CPUS = 3  # os.cpu_count() as the tests see it: the limits are 4 per CPU, so 12


@pytest.fixture(autouse=True)
def three_cpus(monkeypatch):
    monkeypatch.setattr(configs.os, "cpu_count", lambda: CPUS)


# (key, a bad value, a phrase of what the error says was expected)
BAD = [
    ("train.threads", 13, "an integer from 0 to 12 (4 per CPU"),
    ("train.threads", -1, "an integer from 0 to 12"),
    ("train.threads", 100000, "an integer from 0 to 12"),
    ("train.threads", "4", "an integer from 0 to 12"),
    ("train.threads", True, "an integer from 0 to 12"),
    ("data.workers", 100000, "an integer from 0 to 12"),
    ("data.workers", -1, "an integer from 0 to 12"),
    ("eval.workers", 13, "an integer from 0 to 12"),
    ("eval.workers", 2.0, "an integer from 0 to 12"),
    ("eval.batch_size", 0, "an integer from 1 to 4096"),
    ("eval.batch_size", 4097, "an integer from 1 to 4096"),
    ("eval.chunk_size", 0, "an integer from 1 to 1048576"),
    ("eval.rerank_k1", 0, "an integer >= 1"),
    ("eval.rerank_k2", 0, "an integer from 1 to eval.rerank_k1 + 1 = 21"),
    ("eval.rerank_k2", 22, "an integer from 1 to eval.rerank_k1 + 1 = 21"),
    ("eval.rerank_lambda", 1.5, "a number in [0, 1]"),
    ("eval.rerank_lambda", -0.1, "a number in [0, 1]"),
    ("eval.rerank", "yes", "true or false"),
    ("eval.query_expansion", 1, "true or false"),
    ("eval.qe_k", 0, "an integer >= 1"),
    ("eval.qe_times", 0, "an integer from 1 to 100"),
    ("eval.qe_times", 10**6, "an integer from 1 to 100"),
    ("eval.qe_alpha", float("inf"), "a finite number >= 0"),
    ("eval.qe_alpha", -1.0, "a finite number >= 0"),
    ("train.device", "gpu", "auto, cpu, cuda or cuda:N"),
    ("train.device", "cuda:x", "auto, cpu, cuda or cuda:N"),
    ("train.device", "cuda:-1", "auto, cpu, cuda or cuda:N"),
    ("train.device", 0, "auto, cpu, cuda or cuda:N"),
    ("train.output", "", "a folder path"),
    ("train.output", None, "a folder path"),
    ("data.root", 5, "a folder path, a list of them, or null"),
]


def _pair(key, value):
    return (key.split("."), value)


@pytest.mark.parametrize("key,value,expected", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_a_bad_runtime_setting_from_the_command_line_is_named_with_its_source(key, value, expected):
    with pytest.raises(ConfigError) as info:
        load_config("demo", [_pair(key, value)])
    message = str(info.value)
    assert message.startswith(f"{key} must be {expected}"), message
    assert f"got {value!r}" in message and message.endswith("(from --set or a command-line flag)"), message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("key,value,expected", BAD[::4], ids=[f"{k}={v!r}" for k, v, _ in BAD[::4]])
def test_a_bad_runtime_setting_in_a_preset_names_the_preset(key, value, expected, tmp_path):
    section, name = key.split(".")
    preset = tmp_path / "mine.yaml"
    preset.write_text(yaml.safe_dump({"_base_": "demo", section: {name: value}}))
    with pytest.raises(ConfigError, match=rf"^{key} must be .*\(from --config {preset}\)$"):
        load_config(str(preset))
    # A flag that sets the key right wins over the preset: nothing is checked before the overrides apply.
    good = configs.DEFAULTS[section][name]
    assert load_config(str(preset), [_pair(key, good)])[section][name] == good


@pytest.mark.parametrize("key,value,expected", BAD[1::4], ids=[f"{k}={v!r}" for k, v, _ in BAD[1::4]])
def test_a_bad_runtime_setting_in_a_saved_configuration_names_the_file(key, value, expected):
    section, name = key.split(".")
    saved = load_config("demo")
    saved[section][name] = value
    with pytest.raises(ConfigError, match=rf"^{key} must be .*\(from checkpoint runs/x/checkpoint\.pth\)$"):
        config_from_saved(saved, source="checkpoint runs/x/checkpoint.pth")


def test_the_limits_themselves_are_accepted():
    config = load_config(
        "demo",
        [
            _pair("train.threads", 12),
            _pair("data.workers", 12),
            _pair("eval.workers", 0),
            _pair("eval.batch_size", 4096),
            _pair("eval.chunk_size", 1),
            _pair("eval.rerank_k1", 1),
            _pair("eval.rerank_k2", 2),
            _pair("eval.rerank_lambda", 1),
            _pair("eval.qe_times", 100),
            _pair("eval.qe_alpha", 0),
            _pair("train.device", "cuda:3"),  # the syntax; whether it exists is resolve_device's to say
            _pair("data.root", "/data/market"),
        ],
    )
    assert config["train"]["threads"] == 12 and config["eval"]["batch_size"] == 4096
    assert load_config("demo", [_pair("train.device", "cpu")])["train"]["device"] == "cpu"


def test_model_settings_take_only_what_defines_the_model():
    saved = load_config("demo", [_pair("data.height", 64), _pair("data.width", 32), _pair("model.variant", "M")])
    saved["model"]["pretrained"] = "/home/author/backbone.pth"
    settings = configs.model_settings(saved)
    assert settings == {
        "model": {
            "backbone": saved["model"]["backbone"],
            "variant": "M",
            "ablation": None,
            "kwargs": saved["model"]["kwargs"],
        },
        "data": {"name": saved["data"]["name"], "height": 64, "width": 32},
    }
    config = config_from_model(saved)
    assert config["model"]["pretrained"] is None and config["model"]["variant"] == "M"
    assert config["data"]["height"] == 64 and config["train"] == configs.DEFAULTS["train"]
    with pytest.raises(ConfigError, match="its 'model' section is a list"):
        configs.model_settings({"model": [1]})


def test_a_cuda_device_this_machine_lacks_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"--device cuda:7: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:7")


@pytest.mark.parametrize("batch_size", [0, 4097, 10**6, 2.0])
def test_the_feature_extractors_batch_size_is_bounded_too(batch_size, tmp_path):
    """FeatureExtractor's batch_size (extract's and search's --batch-size) has eval.batch_size's range; it is
    checked before the file is even opened."""
    from scstn_vcn import FeatureExtractor

    with pytest.raises(ValueError, match=r"batch_size must be an integer from 1 to 4096, got "):
        FeatureExtractor(tmp_path / "no-such-model.safetensors", device="cpu", batch_size=batch_size)
