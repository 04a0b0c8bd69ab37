"""ImageNet weights by name (model.pretrained: imagenet | imagenet-v2) through torchvision's weights API
and the torch.hub cache. No test touches the network: the cache lives in a temporary TORCH_HOME, and the
download function is replaced by one that fails the way an offline machine does."""

import os
import urllib.error

import pytest
import torch
import torchvision

from scstn_vcn.cli import main
from scstn_vcn.configs import ConfigError, load_config
from scstn_vcn.models import PretrainedWeightsError, build_backbone, build_model, imagenet_cache_file


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch.hub cache, and a download that fails at once (as with no network)."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return home, calls


def _plant(home, filename, state):
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / filename)
    return folder / filename


def test_cache_file_names_are_torchvisions(torch_home):
    home, _ = torch_home
    folder = os.path.join(str(home), "hub", "checkpoints")
    assert imagenet_cache_file("resnet50", "imagenet") == os.path.join(folder, "resnet50-0676ba61.pth")
    assert imagenet_cache_file("resnet50", "imagenet-v2") == os.path.join(folder, "resnet50-11ad3fa6.pth")
    assert imagenet_cache_file("resnet18", "imagenet") == os.path.join(folder, "resnet18-f37072fd.pth")
    assert imagenet_cache_file("resnet34", "imagenet") == os.path.join(folder, "resnet34-b627a593.pth")


@pytest.mark.parametrize("variant", ["O", "M"])
def test_planted_cache_file_loads_without_network(torch_home, variant):
    home, calls = torch_home
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None).state_dict()  # includes fc.*, which is ignored
    _plant(home, "resnet18-f37072fd.pth", reference)
    model = build_model(5, backbone="resnet18", variant=variant, pretrained="imagenet", input_size=(64, 32))
    assert calls == []
    loaded = model.backbone.state_dict()
    assert set(loaded) == {k for k in reference if not k.startswith("fc.")}
    for key, value in loaded.items():
        assert torch.equal(value, reference[key]), key
    # ... and they are not what a fresh backbone starts with.
    fresh = build_backbone("resnet18", variant).state_dict()
    assert not torch.equal(fresh["conv1.weight"], loaded["conv1.weight"])


def test_imagenet_v2_is_its_own_file(torch_home):
    home, _ = torch_home
    reference = torchvision.models.resnet50(weights=None).state_dict()
    _plant(home, "resnet50-11ad3fa6.pth", reference)
    backbone = build_backbone("resnet50", "O", pretrained="imagenet-v2")
    assert torch.equal(backbone.state_dict()["layer4.2.conv3.weight"], reference["layer4.2.conv3.weight"])
    # The V1 file is another one, absent here.
    with pytest.raises(PretrainedWeightsError, match="resnet50-0676ba61.pth"):
        build_backbone("resnet50", "O", pretrained="imagenet")


def test_empty_cache_offline_is_one_clear_error(torch_home):
    home, calls = torch_home
    folder = os.path.join(str(home), "hub", "checkpoints")
    with pytest.raises(PretrainedWeightsError) as info:
        build_backbone("resnet50", "O", pretrained="imagenet")
    message = str(info.value)
    assert "resnet50-0676ba61.pth" in message and folder in message
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert "Temporary failure in name resolution" in message
    assert len(calls) == 1
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert not os.listdir(folder)  # nothing half-downloaded left behind


def test_corrupt_cache_file_says_to_delete_it(torch_home):
    home, calls = torch_home
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "resnet18-f37072fd.pth").write_bytes(b"truncated")
    with pytest.raises(ValueError, match=r"resnet18-f37072fd\.pth.*delete the file"):
        build_backbone("resnet18", "O", pretrained="imagenet")
    assert calls == []


class _RunsACommand:
    """Unpickling this would run `touch MARKER`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_cache_file_is_refused_and_runs_nothing(torch_home, tmp_path):
    home, calls = torch_home
    marker = tmp_path / "ran"
    _plant(home, "resnet18-f37072fd.pth", {"conv1.weight": _RunsACommand(marker)})
    with pytest.raises(ValueError, match=r"resnet18-f37072fd\.pth are not a plain state dict.*refused") as info:
        build_backbone("resnet18", "O", pretrained="imagenet")
    assert "weights_only" not in str(info.value)  # never the advice to unpickle it
    assert not marker.exists() and calls == []


def test_hostile_weights_file_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "weights.pth"
    torch.save({"conv1.weight": _RunsACommand(marker)}, path)
    with pytest.raises(ValueError, match=r"weights\.pth' is not a plain state dict.*refused"):
        build_backbone("resnet18", "O", pretrained=str(path))
    assert not marker.exists()


def test_names_without_weights_are_refused(torch_home):
    _, calls = torch_home
    with pytest.raises(ValueError, match="'tiny' backbone has no ImageNet weights"):
        build_model(5, backbone="tiny", pretrained="imagenet")
    with pytest.raises(ValueError, match="no IMAGENET1K_V2 weights for resnet18"):
        build_backbone("resnet18", "O", pretrained="imagenet-v2")
    with pytest.raises(ConfigError, match="'tiny' backbone has no ImageNet weights"):
        load_config("r50o_market1501", ["model.backbone=tiny"])
    assert calls == []


def test_paper_presets_ask_for_imagenet():
    for name in (
        "r50o_market1501",
        "r50m_market1501",
        "r50o_dukemtmcreid",
        "r50m_dukemtmcreid",
        "r50o_msmt17",
        "r50m_msmt17",
    ):
        assert load_config(name)["model"]["pretrained"] == "imagenet", name
    assert load_config("demo")["model"]["pretrained"] is None


def test_train_shows_the_missing_weights_as_one_line(torch_home, tmp_path, capsys):
    from scstn_vcn.data import make_synthetic

    home, _ = torch_home
    root = make_synthetic(
        tmp_path / "data",
        num_identities=4,
        seed=0,
        images_per_identity=2,
        gallery_per_identity=2,
        query_per_identity=1,
        num_distractors=0,
        num_junk=0,
    )
    code = main(
        [
            "train",
            "--config",
            "r50o_market1501",
            "--dataset",
            "synthetic",
            "--data-root",
            str(root),
            "--set",
            "model.backbone=resnet18",
            "--set",
            "data.workers=0",
            "--output",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("scstn-vcn train: error: ")
    assert "resnet18-f37072fd.pth" in err and os.path.join(str(home), "hub", "checkpoints") in err
