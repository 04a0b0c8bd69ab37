"""Two-process DistributedDataParallel training on the CPU (gloo): after the steps both ranks
hold the same weights, although each rank trained on its own identities."""

import os

import torch
import torch.multiprocessing as mp
from gloo import free_port, requires_gloo

from scstn_vcn.configs import load_config

pytestmark = requires_gloo


def _config(root, output):
    overrides = {
        "data.root": str(root),
        "data.name": "synthetic",
        "data.height": 64,
        "data.width": 32,
        "data.num_identities": 2,
        "data.num_instances": 2,
        "data.workers": 0,
        "train.output": str(output),
        "train.epochs": 1,
        "train.max_steps_per_epoch": 2,
        "train.device": "cpu",
        "optim.warmup_epochs": 1,
        "optim.lr": 1e-3,
    }
    return load_config("demo", [(k.split("."), v) for k, v in overrides.items()])


def _worker(rank, world_size, port, root, output):
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from scstn_vcn.engine.trainer import Trainer

    trainer = Trainer(_config(root, output), progress=False, say=lambda *a: None)
    try:
        assert trainer.info.world_size == world_size and trainer.info.rank == rank
        assert isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
        first_batch = next(iter(trainer.loader))[1]
        rows = trainer.fit()
        # Parameters only: DDP syncs BN running statistics from rank 0 at the start of each forward,
        # so after the last step each rank's buffers still hold its own batch's update.
        state = {k: v.detach().clone() for k, v in trainer.model.module.named_parameters()}
        torch.save(
            {"state": state, "labels": first_batch, "steps": rows[-1]["steps"]}, os.path.join(output, f"rank{rank}.pt")
        )
    finally:
        trainer.close()


def test_two_process_gloo_training_keeps_ranks_in_sync(tmp_path):
    from scstn_vcn.data import make_synthetic

    root = tmp_path / "data"
    make_synthetic(
        root,
        num_identities=16,
        seed=0,
        images_per_identity=3,
        gallery_per_identity=2,
        query_per_identity=1,
        num_distractors=2,
        num_junk=1,
    )
    output = tmp_path / "run"
    output.mkdir()
    mp.spawn(_worker, args=(2, free_port(), str(root), str(output)), nprocs=2, join=True)

    r0 = torch.load(output / "rank0.pt", weights_only=True)
    r1 = torch.load(output / "rank1.pt", weights_only=True)
    assert r0["steps"] == r1["steps"] == 2
    # The ranks trained on disjoint identities ...
    assert not set(r0["labels"].tolist()) & set(r1["labels"].tolist())
    # ... yet DDP's gradient averaging left them with identical weights.
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key
    # Only rank 0 wrote the checkpoint and the log, with the synchronised weights.
    checkpoint = torch.load(output / "checkpoint.pth", weights_only=True)
    assert checkpoint["epoch"] == 1 and len(checkpoint["rng"]) == 2
    assert len(r0["state"]) > 20
    for key, value in r0["state"].items():
        assert torch.equal(value, checkpoint["model"][key]), key
    assert (output / "log.csv").read_text().count("\n") == 2
