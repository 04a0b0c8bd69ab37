"""Checkpoints: atomic writes, clear errors for missing / corrupt / mismatched files."""

import os

import pytest
import torch

from scstn_vcn.configs import load_config, model_identity
from scstn_vcn.engine import checkpoint as ckpt
from scstn_vcn.engine.optim import build_optimizer, build_scheduler
from scstn_vcn.engine.seed import get_rng_state


def _small_state(config, value):
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(value)
    optimizer = build_optimizer(model, config["optim"])
    scheduler = build_scheduler(optimizer, config["optim"])
    return dict(model=model, optimizer=optimizer, scheduler=scheduler, epoch=int(value), config=config,
                identity=model_identity(config, 10), rng_state=[get_rng_state()])


@pytest.fixture
def config():
    return load_config("demo")


def test_round_trip(tmp_path, config):
    path = tmp_path / "checkpoint.pth"
    ckpt.save_checkpoint(path, **_small_state(config, 3.0))
    state = ckpt.load_checkpoint(path)
    assert state["epoch"] == 3
    assert torch.equal(state["model"]["weight"], torch.full((2, 3), 3.0))
    assert state["config"] == config
    assert state["identity"]["num_classes"] == 10
    assert set(state["rng"][0]) >= {"python", "numpy", "torch"}
    # No temporary files are left in the folder.
    assert os.listdir(tmp_path) == ["checkpoint.pth"]


def test_failure_mid_write_keeps_the_old_checkpoint(tmp_path, config, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    ckpt.save_checkpoint(path, **_small_state(config, 1.0))
    before = path.read_bytes()

    real_save = torch.save

    def broken_save(obj, handle, *args, **kwargs):
        # Write part of the data, then fail as a full disk or a kill would.
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save_checkpoint(path, **_small_state(config, 2.0))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.pth"]
    assert ckpt.load_checkpoint(path)["epoch"] == 1


def test_missing_checkpoint_names_the_path(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(ckpt.CheckpointError, match=f"{path}: no such file"):
        ckpt.load_checkpoint(path)


def test_corrupt_checkpoint_names_the_path(tmp_path, config):
    path = tmp_path / "checkpoint.pth"
    ckpt.save_checkpoint(path, **_small_state(config, 1.0))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ckpt.CheckpointError, match=str(path)):
        ckpt.load_checkpoint(path)


def test_foreign_torch_file_is_refused(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ckpt.CheckpointError, match="not an scstn-vcn checkpoint"):
        ckpt.load_checkpoint(path)


def test_checkpoint_of_another_configuration_is_refused(tmp_path, config):
    path = tmp_path / "checkpoint.pth"
    ckpt.save_checkpoint(path, **_small_state(config, 1.0))
    state = ckpt.load_checkpoint(path)
    ckpt.check_identity(path, state, model_identity(config, 10))  # the same: accepted
    other = load_config("demo", ["model.variant=M", "model.backbone=resnet18"])
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.check_identity(path, state, model_identity(other, 12))
    message = str(info.value)
    assert str(path) in message and "another configuration" in message
    assert "num_classes: checkpoint has 10, this run expects 12" in message
    assert "variant: checkpoint has 'O', this run expects 'M'" in message
    assert "backbone" in message
