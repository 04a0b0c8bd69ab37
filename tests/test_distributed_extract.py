"""`torchrun --nproc_per_node 2 -m scstn_vcn.cli extract ...` on the CPU (gloo): the ranks split the shards
of one feature folder, and the features equal a one-process run's to the last bit (float32)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from gloo import free_port, requires_gloo

from scstn_vcn.configs import load_config
from scstn_vcn.metrics.feature_store import open_features

pytestmark = requires_gloo


@pytest.fixture(scope="module")
def checkpoint_and_images(tmp_path_factory):
    from scstn_vcn.data import build_dataset, make_synthetic
    from scstn_vcn.engine.trainer import Trainer

    base = tmp_path_factory.mktemp("dist_extract")
    root = make_synthetic(
        base / "data",
        num_identities=4,
        seed=1,
        images_per_identity=3,
        gallery_per_identity=2,
        num_distractors=3,
        num_junk=0,
    )
    overrides = {
        "data.root": str(root),
        "data.name": "synthetic",
        "data.height": 64,
        "data.width": 32,
        "data.num_identities": 2,
        "data.num_instances": 2,
        "data.workers": 0,
        "train.output": str(base / "run"),
        "train.epochs": 1,
        "train.max_steps_per_epoch": 1,
        "optim.warmup_epochs": 1,
    }
    trainer = Trainer(load_config("demo", [(k.split("."), v) for k, v in overrides.items()]), progress=False, say=print)
    try:
        trainer.fit()
    finally:
        trainer.close()
    dataset = build_dataset("synthetic", str(root))
    listing = base / "images.txt"
    paths = [item[0] for item in dataset.gallery + dataset.query]
    listing.write_text("\n".join(paths) + "\n")
    return trainer.checkpoint_path, listing, len(paths)


def _extract(launcher, checkpoint, listing, output):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    args = ["extract", "--checkpoint", str(checkpoint), "--images", str(listing), "--output", str(output)]
    args += ["--device", "cpu", "--shard-size", "3", "--batch-size", "2", "--no-progress", "--labels-from-names"]
    done = subprocess.run(launcher + args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_two_gloo_processes_write_one_feature_set(checkpoint_and_images, tmp_path):
    checkpoint, listing, count = checkpoint_and_images
    assert count > 6  # several shards for each rank
    single = tmp_path / "one"
    _extract([sys.executable, "-m", "scstn_vcn.cli"], checkpoint, listing, single)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    printed = _extract(torchrun + ["-m", "scstn_vcn.cli"], checkpoint, listing, tmp_path / "two")
    assert printed.count("wrote the features of") == 1  # rank 0 finishes the folder
    one, two = open_features(single), open_features(tmp_path / "two")
    assert one.num_items == two.num_items == count and one.paths == two.paths
    np.testing.assert_array_equal(one.pids, two.pids)
    assert (one.pids > 0).any() and (one.camids >= 0).all()
    for name in ("global", "spatial"):
        assert one.feats[name].dtype == np.float32
        np.testing.assert_array_equal(one.feats[name], two.feats[name])
