"""Engine: the learning-rate schedule, configs, backend choice, and exact resume."""

import pytest
import torch

from scstn_vcn import ops
from scstn_vcn.configs import ConfigError, list_presets, load_config
from scstn_vcn.engine.optim import build_optimizer, build_scheduler, lr_factor
from scstn_vcn.engine.runtime import choose_backend

PAPER = {"lr": 5e-4, "warmup_epochs": 30, "step_size": 80, "step_gamma": 0.1, "weight_decay": 5e-4}


@pytest.mark.parametrize(
    "epoch, expected",
    [
        (0, 5e-4 / 30),
        (14, 5e-4 * 15 / 30),
        (29, 5e-4),
        (30, 5e-4),
        (109, 5e-4),
        (110, 5e-5),
        (189, 5e-5),
        (190, 5e-6),
        (270, 5e-7),
        (299, 5e-7),
    ],
)
def test_paper_schedule(epoch, expected):
    assert lr_factor(epoch, 30, 80, 0.1) * 5e-4 == pytest.approx(expected, rel=1e-9)


def test_scheduler_steps_per_epoch():
    """The LambdaLR the trainer steps once per epoch gives the same values as lr_factor."""
    model = torch.nn.Linear(4, 2)
    optimizer = build_optimizer(model, PAPER)
    scheduler = build_scheduler(optimizer, PAPER)
    seen = []
    for _ in range(300):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(5e-4 / 30)
    assert seen[29] == pytest.approx(5e-4) and seen[30] == pytest.approx(5e-4)
    assert seen[110] == pytest.approx(5e-5) and seen[109] == pytest.approx(5e-4)
    assert seen[299] == pytest.approx(5e-7)
    # Both parameter groups (decayed weights, undecayed biases) follow the schedule.
    assert [g["weight_decay"] for g in optimizer.param_groups] == [5e-4, 0.0]


def test_paper_presets_hold_the_recipe():
    names = {f"r50{v}_{d}" for v in "om" for d in ("market1501", "dukemtmcreid", "msmt17")}
    assert names <= set(list_presets())
    for name in names:
        config = load_config(name)
        assert config["model"]["backbone"] == "resnet50"
        assert config["model"]["variant"] == name[3].upper()
        assert config["data"]["name"] == name.split("_", 1)[1]
        assert (config["data"]["height"], config["data"]["width"]) == (384, 128)
        assert (config["data"]["num_identities"], config["data"]["num_instances"]) == (16, 6)
        assert config["optim"]["lr"] == 5e-4
        assert (config["optim"]["warmup_epochs"], config["optim"]["step_size"]) == (30, 80)
        assert config["train"]["epochs"] == 300
        assert (config["loss"]["alpha"], config["loss"]["beta"], config["loss"]["gamma"]) == (0.5, 0.5, 1e-7)


def test_overrides_and_their_errors(tmp_path):
    config = load_config("r50o_market1501", ["optim.lr=1e-3", "data.root=/data/m", "model.kwargs.num_kernels=4"])
    assert config["optim"]["lr"] == 1e-3 and config["data"]["root"] == "/data/m"
    assert config["model"]["kwargs"] == {"num_kernels": 4}
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'"):
        load_config("demo", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("demo", ["optim.lr"])
    with pytest.raises(ConfigError, match="model.variant must be 'O' or 'M'"):
        load_config("demo", ["model.variant=X"])
    with pytest.raises(ConfigError, match="no such file and no such preset"):
        load_config(str(tmp_path / "missing.yaml"))
    preset = tmp_path / "mine.yaml"
    preset.write_text("_base_: paper.yaml\ntrain:\n  epochs: 7\n")
    assert load_config(str(preset))["train"]["epochs"] == 7
    preset.write_text("training:\n  epochs: 7\n")
    with pytest.raises(ConfigError, match="unknown section 'training'"):
        load_config(str(preset))


def test_unfused_runs_eager():
    assert choose_backend(False, None, torch.device("cpu")) == "eager"
    assert ops.get_backend() == "eager"


def test_fused_on_cpu_uses_native_or_says_why():
    try:
        if ops.backend_status("native", "cpu")[0]:
            assert choose_backend(True, None, torch.device("cpu")) == "native"
            assert ops.get_backend() == "native"
        else:
            with pytest.raises(ops.BackendUnavailableError, match="'native' backend on cpu"):
                choose_backend(True, None, torch.device("cpu"))
            assert ops.get_backend() == "eager"  # nothing switched behind the error
    finally:
        ops.set_backend("eager")


def test_triton_on_cpu_is_refused_not_replaced(monkeypatch):
    # The test session may run Triton in its interpreter (tests/conftest.py); a user's run does not.
    monkeypatch.setattr("scstn_vcn.ops._backend.triton_interpreting", lambda: False)
    with pytest.raises(ops.BackendUnavailableError, match="'triton' backend on cpu, which is not available"):
        choose_backend(True, "triton", torch.device("cpu"))
    assert ops.get_backend() == "eager"
    with pytest.raises(ValueError, match="only applies with --fused"):
        choose_backend(False, "native", torch.device("cpu"))


# --------------------------------------------------------------------------- training runs


def tiny_config(root, output, **train):
    overrides = [
        ("data.root", str(root)),
        ("data.name", "synthetic"),
        ("data.height", 64),
        ("data.width", 32),
        ("data.num_identities", 4),
        ("data.num_instances", 2),
        ("data.workers", 0),
        ("eval.workers", 0),
        ("train.output", str(output)),
        ("train.epochs", 2),
        ("train.max_steps_per_epoch", 2),
        ("optim.warmup_epochs", 1),
        ("optim.lr", 1e-3),
    ] + [(f"train.{k}", v) for k, v in train.items()]
    return load_config("demo", [(key.split("."), value) for key, value in overrides])


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from scstn_vcn.data import make_synthetic

    root = tmp_path_factory.mktemp("tiny") / "data"
    make_synthetic(
        root,
        num_identities=8,
        seed=0,
        images_per_identity=4,
        gallery_per_identity=3,
        query_per_identity=1,
        num_distractors=2,
        num_junk=1,
    )
    return root


def _train(config, resume=None, stop_after=None):
    from scstn_vcn.engine.trainer import Trainer

    class Stop(Exception):
        pass

    def interrupt(epoch, trainer):
        if stop_after is not None and epoch == stop_after:
            raise Stop()

    trainer = Trainer(config, resume=resume, progress=False, say=lambda *a: None, on_epoch_end=interrupt)
    try:
        trainer.fit()
    except Stop:
        pass
    finally:
        trainer.close()
    return trainer


def test_interrupted_run_resumes_to_the_same_weights(tiny_data, tmp_path):
    straight = _train(tiny_config(tiny_data, tmp_path / "straight"))
    first = _train(tiny_config(tiny_data, tmp_path / "interrupted"), stop_after=1)
    checkpoint = tmp_path / "interrupted" / "checkpoint.pth"
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    # Scramble the global RNG, as a fresh process would have it, before resuming.
    torch.manual_seed(12345)
    resumed = _train(tiny_config(tiny_data, tmp_path / "interrupted"), resume=str(checkpoint))
    assert resumed.start_epoch == 1
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # ... and training did change the weights (the comparison above is not of two fresh models).
    fresh = first.model.state_dict()
    assert any(not torch.equal(a[k], fresh[k]) for k in a if a[k].is_floating_point())
    log = (tmp_path / "interrupted" / "log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log] == ["epoch", "1", "2"]
    assert straight.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]


def test_resume_from_another_configuration_names_the_checkpoint(tiny_data, tmp_path):
    from scstn_vcn.engine.checkpoint import CheckpointError

    _train(tiny_config(tiny_data, tmp_path / "run", epochs=1))
    checkpoint = tmp_path / "run" / "checkpoint.pth"
    other = tiny_config(tiny_data, tmp_path / "other")
    other["model"]["variant"] = "M"
    with pytest.raises(CheckpointError, match=f"{checkpoint} is of another configuration.*variant"):
        _train(other, resume=str(checkpoint))


def test_training_lowers_the_loss(tiny_data, tmp_path):
    threads = torch.get_num_threads()
    trainer = _train(tiny_config(tiny_data, tmp_path / "run", epochs=6, max_steps_per_epoch=3))
    from scstn_vcn.engine.logging import read_csv_log

    rows = read_csv_log(trainer.logger.path)
    assert len(rows) == 6
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert {"loss_global_ce", "loss_spatial_ce", "loss_spatial_rll", "lr", "acc"} <= set(rows[0])
    # The demo preset's `threads: 1` applied during the run only.
    assert torch.get_num_threads() == threads


def test_ablations_from_the_config():
    from scstn_vcn.engine.builders import build_loss_from_config, build_model_from_config

    base = [("data.height", 64), ("data.width", 32)]
    config = load_config("demo", [(k.split("."), v) for k, v in base + [("model.ablation", "baseline")]])
    model = build_model_from_config(config, 5).eval()
    assert set(model(torch.randn(2, 3, 64, 32))) == {"global"}
    config = load_config("demo", [(k.split("."), v) for k, v in base + [("model.ablation", "no_rll")]])
    assert build_loss_from_config(config, 5).rll is None
    config = load_config("demo", [(k.split("."), v) for k, v in base + [("model.ablation", "nonsense")]])
    with pytest.raises(ValueError, match="unknown ablation 'nonsense'"):
        build_model_from_config(config, 5)
