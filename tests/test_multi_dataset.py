"""Several data sets in one run: the union's identities and cameras kept apart, P x K sampling over it, the
classifier sized to it, the record of the training sets; the config's list forms; a tiny run trained on two
synthetic sets (different seeds) and evaluated on each and on a third it never saw."""

import json

import pytest
import torch
import yaml

from scstn_vcn.cli import main
from scstn_vcn.configs import ConfigError, data_sets, eval_targets, load_config
from scstn_vcn.data import CombinedDataset, PKBatchSampler, build_dataset, make_synthetic

SMALL = dict(images_per_identity=4, gallery_per_identity=3, query_per_identity=1, num_distractors=2, num_junk=1)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Three synthetic sets written with seeds 1, 2, 3 (6 training identities each, different people)."""
    base = tmp_path_factory.mktemp("multi")
    return [make_synthetic(base / f"s{seed}", num_identities=12, seed=seed, **SMALL) for seed in (1, 2, 3)]


def test_the_union_keeps_identities_and_cameras_apart(sets):
    a, b = build_dataset("synthetic", sets[0]), build_dataset("synthetic", sets[1])
    both = CombinedDataset([a, b])
    cam_offset = 1 + max(it.camid for split in (a.train, a.query, a.gallery) for it in split)
    assert both.offsets == [(0, 0), (a.num_train_pids, cam_offset)]
    assert both.train[: len(a.train)] == a.train
    assert [(p, pid - a.num_train_pids, cam - cam_offset) for p, pid, cam in both.train[len(a.train) :]] == b.train
    assert both.num_train_pids == a.num_train_pids + b.num_train_pids == len({it.pid for it in both.train})
    assert both.num_train_cams == a.num_train_cams + b.num_train_cams
    # P x K over the union: every identity of both sets is drawn in an epoch, P distinct ones a batch.
    sampler = PKBatchSampler(both.train, num_identities=4, num_instances=2, seed=0, drop_last=False)
    drawn = set()
    for batch in sampler:
        pids = [both.train[i].pid for i in batch]
        assert len(set(pids)) == 4 and len(pids) == 8
        drawn |= set(pids)
    assert drawn == set(range(both.num_train_pids))
    assert both.query == [] and [p.root for p in both.parts] == [a.root, b.root]


def test_a_set_without_training_images_cannot_be_combined(sets, tmp_path):
    query_only = tmp_path / "q.csv"
    item = build_dataset("synthetic", sets[0]).query[0]
    query_only.write_text(f"path,pid,camid,split\n{item.path},{item.pid},{item.camid},query\n")
    with pytest.raises(ValueError, match=rf"the train split of {query_only} \(lines with split=train\) is empty"):
        CombinedDataset([build_dataset("synthetic", sets[0]), build_dataset("manifest", query_only)])


def test_the_list_forms_of_the_config(tmp_path):
    config = load_config("demo", ["data.name=market1501,dukemtmcreid", "data.root=/d/m, /d/d"])
    assert config["data"]["name"] == ["market1501", "dukemtmcreid"] and config["data"]["root"] == ["/d/m", "/d/d"]
    assert data_sets(config) == [("market1501", "/d/m"), ("dukemtmcreid", "/d/d")]
    one = load_config("demo", ["data.name=manifest", "data.root=/d/a,b.csv"])  # one name: the root stays whole
    assert data_sets(one) == [("manifest", "/d/a,b.csv")]
    preset = tmp_path / "two.yaml"
    preset.write_text(
        yaml.safe_dump(
            {
                "_base_": "demo",
                "data": {"name": ["synthetic", "folders"], "root": ["/a", "/b"]},
                "eval": {"targets": ["market1501:/data/m", {"name": "manifest", "root": "/c/x.csv"}]},
            }
        )
    )
    config = load_config(str(preset))
    assert data_sets(config) == [("synthetic", "/a"), ("folders", "/b")]
    assert eval_targets(config) == [("market1501", "/data/m"), ("manifest", "/c/x.csv")]
    with pytest.raises(ConfigError, match=r"data.root gives 1 folder\(s\) for the 2 data set\(s\)"):
        load_config("demo", ["data.name=a,b", "data.root=/x"])
    with pytest.raises(ConfigError, match="data.name must be a name or a list of names without empty entries"):
        load_config("demo", ["data.name=a,,b"])
    with pytest.raises(ConfigError, match="eval.targets: 'market1501' is not a target; expected 'name:root'"):
        load_config("demo", [(["eval", "targets"], ["market1501"])])


def test_the_same_set_twice_and_kwargs_per_set(sets):
    from scstn_vcn.engine.builders import _reader_kwargs, build_datasets_from_config

    config = load_config(
        "demo", [(["data", "name"], ["synthetic", "synthetic"]), (["data", "root"], [str(sets[0])] * 2)]
    )
    with pytest.raises(ValueError, match=f"synthetic at {sets[0]} is listed twice"):
        build_datasets_from_config(config)
    config["data"]["kwargs"] = {"msmt17": {"combine_trainval": True}, "common": 1}
    assert _reader_kwargs(config, "MSMT17") == {"common": 1, "combine_trainval": True}
    assert _reader_kwargs(config, "market1501") == {"common": 1}


# --------------------------------------------------------------------------- a run on two sets


@pytest.fixture(scope="module")
def run(sets, tmp_path_factory):
    """Trained on the sets of seeds 1 and 2 (the config's list form), evaluated also on seed 3's set."""
    out = tmp_path_factory.mktemp("multi_run")
    preset = out / "two.yaml"
    preset.write_text(
        yaml.safe_dump(
            {
                "_base_": "demo",
                "data": {
                    "name": ["synthetic", "synthetic"],
                    "root": [str(sets[0]), str(sets[1])],
                    "height": 64,
                    "width": 32,
                    "num_identities": 4,
                    "num_instances": 2,
                    "workers": 0,
                },
                "train": {"epochs": 1, "max_steps_per_epoch": 2},
                "eval": {"batch_size": 32},
            }
        )
    )
    argv = ["train", "--config", str(preset), "--output", str(out / "run"), "--no-progress"]
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(argv + ["--eval-target", f"synthetic:{sets[2]}"])
    assert code == 0, printed.getvalue()
    return out / "run", printed.getvalue()


def test_the_classifier_covers_the_union_and_the_file_records_the_sets(run, sets):
    folder, printed = run
    assert "on synthetic (6 ids) + synthetic (6 ids): 12 identities, 48 images" in printed
    state = torch.load(folder / "checkpoint.pth", weights_only=True)
    assert state["identity"]["num_classes"] == 12
    fingerprints = [build_dataset("synthetic", root).train_fingerprint() for root in sets[:2]]
    assert state["identity"]["trained_on"] == [
        {"dataset": "synthetic", "identities": 6, "images": 24, "train_sha256": fingerprints[0]},
        {"dataset": "synthetic", "identities": 6, "images": 24, "train_sha256": fingerprints[1]},
    ]
    assert len(set(fingerprints)) == 2 and all(len(f) == 16 for f in fingerprints)
    classifiers = [v for k, v in state["model"].items() if "classifier" in k and k.endswith("weight")]
    assert classifiers and all(w.shape[0] == 12 for w in classifiers)


def test_each_set_and_the_unseen_one_get_a_table(run, sets):
    folder, printed = run
    results = json.loads((folder / "results.json").read_text())
    targets = results["targets"]
    assert [(t["dataset"], t["data_root"], t["trained_on"]) for t in targets] == [
        ("synthetic", str(sets[0]), True),
        ("synthetic", str(sets[1]), True),
        ("synthetic", str(sets[2]), False),
    ]
    for number, target in enumerate(targets, 1):
        assert target["queries"] == {"valid": 6, "total": 6}
        assert set(target["results"]) == {"global", "spatial", "fusion"}
        assert all(0 <= v <= 100 for row in target["results"].values() for v in row.values())
        assert f"target {number}/3: synthetic at {target['data_root']}" in printed
    assert "(not one of the training sets)" in printed and printed.count("(one of the training sets)") == 2
    # The first target's table is also "results", as for a run on one data set.
    assert results["results"] == targets[0]["results"] and results["queries"] == targets[0]["queries"]
    # Different data give different tables (the three are not one evaluation copied).
    assert targets[0]["results"] != targets[2]["results"]


def test_the_model_file_keeps_the_record_of_the_training_sets(run, tmp_path):
    from scstn_vcn.engine.model_file import open_model_source

    folder, _ = run
    target = tmp_path / "two.safetensors"
    code = main(
        ["export", "--checkpoint", str(folder / "checkpoint.pth"), "--format", "safetensors", "--output", str(target)]
    )
    assert code == 0
    record = torch.load(folder / "checkpoint.pth", weights_only=True)["identity"]["trained_on"]
    assert open_model_source(target).identity["trained_on"] == record
