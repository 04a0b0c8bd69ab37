"""Checkpoints: plain data read with weights_only=True, exact RNG states, atomic writes, clear errors for missing /
corrupt / mismatched / version-1 files, and the explicit conversion of a version-1 checkpoint."""

import os
import random
import stat

import numpy as np
import pytest
import torch

from scstn_vcn.cli import main
from scstn_vcn.configs import load_config, model_identity
from scstn_vcn.engine import checkpoint as ckpt
from scstn_vcn.engine.optim import build_optimizer, build_scheduler
from scstn_vcn.engine.seed import get_rng_state, set_rng_state


def _small_state(config, value):
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(value)
    optimizer = build_optimizer(model, config["optim"])
    scheduler = build_scheduler(optimizer, config["optim"])
    return dict(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        epoch=int(value),
        config=config,
        identity=model_identity(config, 10),
        rng_state=[get_rng_state()],
    )


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


def _leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def test_a_checkpoint_is_plain_data_read_weights_only(tmp_path, config):
    path = tmp_path / "checkpoint.pth"
    ckpt.save_checkpoint(path, **_small_state(config, 1.0))
    state = torch.load(path, weights_only=True)  # no allow-list: nothing but tensors and plain values
    assert state["format"] == ckpt.FORMAT and state["version"] == ckpt.VERSION == 2
    kinds = {type(leaf) for leaf in _leaves(state)}
    assert kinds <= {torch.Tensor, torch.nn.Parameter, int, float, str, bool, type(None)}, kinds
    rng = state["rng"][0]
    assert rng["python"]["words"].dtype == rng["numpy"]["key"].dtype == torch.int64
    assert rng["numpy"]["key"].shape == (624,) and rng["python"]["words"].shape == (625,)


def _draws():
    return (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        float(np.random.standard_normal()),
        torch.rand(3),
    )


def test_rng_states_survive_a_checkpoint_exactly(tmp_path, config):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves Python's second Gaussian cached (gauss_next)
    np.random.standard_normal()  # ... and numpy's (has_gauss, cached_gaussian)
    path = tmp_path / "checkpoint.pth"
    ckpt.save_checkpoint(path, **_small_state(config, 1.0))
    expected = _draws()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(ckpt.load_checkpoint(path)["rng"][0])
    got = _draws()
    assert got[:4] == expected[:4] and torch.equal(got[4], expected[4])


def test_a_malformed_rng_state_is_refused_and_changes_nothing():
    state = get_rng_state()
    state["numpy"]["key"] = torch.zeros(3, dtype=torch.int64)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    random_before = random.random()
    random.setstate(before[0])
    with pytest.raises(ValueError, match="numpy key: expected a tensor of 624 int64 words"):
        set_rng_state(state)
    assert random.random() == random_before
    assert np.array_equal(np.random.get_state()[1], before[1]) and torch.equal(torch.get_rng_state(), before[2])


def test_configuration_values_become_plain_data_or_are_named(tmp_path, config):
    path = tmp_path / "checkpoint.pth"
    config["optim"]["lr"] = np.float64(1e-3)  # a float subclass, pickled as numpy's
    config["optim"]["step_size"] = np.int64(80)
    config["optim"]["betas"] = (0.9, 0.999)
    ckpt.save_checkpoint(path, **_small_state(config, 1.0))
    saved = torch.load(path, weights_only=True)["config"]["optim"]
    assert type(saved["lr"]) is float and type(saved["step_size"]) is int and saved["betas"] == [0.9, 0.999]
    config["model"]["kwargs"]["heads"] = {"vcn", "gp"}
    with pytest.raises(TypeError, match="config.model.kwargs.heads: a builtins.set cannot be saved"):
        ckpt.save_checkpoint(tmp_path / "other.pth", **_small_state(config, 1.0))
    assert os.listdir(tmp_path) == ["checkpoint.pth"]


def test_mismatched_weights_leave_the_model_untouched(tmp_path, config):
    path = tmp_path / "checkpoint.pth"
    ckpt.save_checkpoint(path, **_small_state(config, 3.0))
    state = ckpt.load_checkpoint(path)
    state["model"]["extra"] = torch.zeros(1)  # load_state_dict alone would copy weight and bias, then complain
    model = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ckpt.CheckpointError, match=f"checkpoint {path}: its weights do not fit.*unexpected extra"):
        ckpt.load_model_weights(path, state, model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    state["model"]["weight"] = state["model"]["weight"].double()
    del state["model"]["extra"]
    with pytest.raises(ckpt.CheckpointError, match=r"dtype \(file vs model\) weight torch.float64 vs torch.float32"):
        ckpt.load_model_weights(path, state, model)


def _version_1_checkpoint(path, config):
    """A checkpoint as version 1 wrote it: numpy's RNG state as a numpy array, Python's as tuples."""
    state = ckpt.make_checkpoint(**_small_state(config, 2.0))
    state["version"] = 1
    state["rng"] = [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}]
    torch.save(state, path)
    return state


def test_a_version_1_checkpoint_is_refused_with_how_to_convert_it(tmp_path, config):
    path = tmp_path / "old.pth"
    _version_1_checkpoint(path, config)
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load_checkpoint(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert f"checkpoint {path}: format version 1" in message and "numpy" in message
    assert f"scstn-vcn convert-checkpoint {path} NEW.pth --trust" in message


def test_convert_checkpoint_needs_trust_and_keeps_everything(tmp_path, config, capsys):
    old, new = tmp_path / "old.pth", tmp_path / "new.pth"
    written = _version_1_checkpoint(old, config)
    old_bytes = old.read_bytes()
    assert main(["convert-checkpoint", str(old), str(new)]) == 2
    assert "pass --trust if you trust where the file came from" in capsys.readouterr().err and not new.exists()

    assert main(["convert-checkpoint", str(old), str(new), "--trust"]) == 0
    assert "to " + str(new) in capsys.readouterr().out
    assert old.read_bytes() == old_bytes
    state = torch.load(new, weights_only=True)
    assert state["version"] == 2 and state["epoch"] == written["epoch"] and state["config"] == config
    assert torch.equal(state["model"]["weight"], written["model"]["weight"])
    assert state["optimizer"]["param_groups"] == written["optimizer"]["param_groups"]
    # The converted RNG state restores exactly the generators' old states.
    set_rng_state(state["rng"][0])
    old_rng = written["rng"][0]
    assert random.getstate() == old_rng["python"]
    now = np.random.get_state()
    assert now[0] == old_rng["numpy"][0] and now[2:] == old_rng["numpy"][2:]
    assert np.array_equal(now[1], old_rng["numpy"][1])
    assert torch.equal(torch.get_rng_state(), old_rng["torch"])

    assert main(["convert-checkpoint", str(old), str(new), "--trust"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert-checkpoint", str(new), str(tmp_path / "again.pth"), "--trust"]) == 2
    assert "already format version 2, nothing to convert" in capsys.readouterr().err


def test_written_files_get_the_usual_permissions_not_the_temporary_files(tmp_path):
    """A checkpoint, model file or features file is renamed from a private (0o600) temporary file; it must end
    with the mode open() would give it (0o666 less the umask), so that it can be shared like any other file."""
    from scstn_vcn.engine.checkpoint import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.bin", lambda handle: handle.write(b"x"))
        assert stat.S_IMODE(os.stat(tmp_path / "a.bin").st_mode) == 0o644
        os.umask(0o077)
        atomic_write(tmp_path / "b.bin", lambda handle: handle.write(b"x"))
        assert stat.S_IMODE(os.stat(tmp_path / "b.bin").st_mode) == 0o600
    finally:
        os.umask(old)


@pytest.mark.parametrize("status", ["linux", "no-umask-line", "no-proc"])
def test_the_umask_is_read_without_being_changed(tmp_path, monkeypatch, status):
    """os.umask can only set the umask; setting it to 0 and back to read it is process-wide, so a file another
    thread creates in between would get mode 0o666. The mode comes from /proc/self/status's Umask line, or,
    where there is none (an older kernel, no /proc), from a probe file; os.umask is never called."""
    old = os.umask(0o027)
    try:
        if status == "no-umask-line":
            fake = tmp_path / "status"
            fake.write_text("Name:\tpython\nState:\tR (running)\n")
            monkeypatch.setattr(ckpt, "PROC_STATUS", str(fake))
        elif status == "no-proc":
            monkeypatch.setattr(ckpt, "PROC_STATUS", str(tmp_path / "missing"))
        elif ckpt._umask_from_proc() is None:
            pytest.skip("this system's /proc/self/status has no Umask line")

        def refuse(*args):
            raise AssertionError("os.umask was called: it changes the umask of every thread")

        monkeypatch.setattr(os, "umask", refuse)
        assert ckpt.default_file_mode() == 0o640
        ckpt.atomic_write(tmp_path / "a.bin", lambda handle: handle.write(b"x"))
        assert stat.S_IMODE(os.stat(tmp_path / "a.bin").st_mode) == 0o640
        assert sorted(os.listdir(tmp_path)) == sorted(["a.bin"] + (["status"] if status == "no-umask-line" else []))
    finally:
        monkeypatch.undo()
        os.umask(old)
