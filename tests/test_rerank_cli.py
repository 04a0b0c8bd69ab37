"""Re-ranking and query expansion from the command line and the config: `scstn-vcn eval --rerank ...`
maps onto the eval.* keys, the table shows the "+rk" / "+qe" rows beside the plain ones, results.json
records the settings; bad values are one-line errors naming the key. The model is replaced by planted
features (the flags' path from argv to the evaluation is what is tested; tests/test_cli.py runs the model)."""

import json

import numpy as np
import pytest
import torch

from scstn_vcn.cli import main
from scstn_vcn.commands import eval as eval_command
from scstn_vcn.commands._common import config_overrides
from scstn_vcn.configs import ConfigError, load_config
from scstn_vcn.engine import evaluator
from scstn_vcn.metrics import QueryExpansionConfig, RerankConfig, evaluate_features

NUM_IDS, PER_ID_QUERY, PER_ID_GALLERY = 12, 2, 7


def planted_features(seed=0):
    """Query / gallery dicts as extract_features returns them: clustered global and spatial features."""
    gen = torch.Generator().manual_seed(seed)
    sets = []
    for per_id, cam in ((PER_ID_QUERY, 0), (PER_ID_GALLERY, 1)):
        pids = torch.arange(NUM_IDS).repeat_interleave(per_id)
        feats = {}
        for name, dim in (("global", 16), ("spatial", 24)):
            centers = torch.randn(NUM_IDS, dim, generator=gen)
            feats[name] = centers[pids] + 1.2 * torch.randn(pids.shape[0], dim, generator=gen)
        camids = torch.full_like(pids, cam)
        camids[::3] = 2  # some same-camera pairs, discarded by the protocol
        sets.append({"feats": feats, "pids": pids.numpy(), "camids": camids.numpy()})
    return sets


@pytest.fixture
def planted(monkeypatch, tmp_path):
    """`eval` with the real flag -> config path (config_overrides, load_config's validation) but planted
    features instead of a checkpoint's model and a data set."""
    from types import SimpleNamespace

    from scstn_vcn.data import Item, ReIDDataset
    from scstn_vcn.engine import builders

    query, gallery = planted_features()

    def load_model_for_inference(args, need_data=True, with_source=False):
        config = load_config(None, config_overrides(args))
        loaded = (config, None, None, torch.device("cpu"))
        # a model file without a training-set record (identity): eval falls back to the config's data sets
        return loaded + (SimpleNamespace(config=config, identity={}),) if with_source else loaded

    def items(split):
        return [Item(f"{i}.jpg", int(p), int(c)) for i, (p, c) in enumerate(zip(split["pids"], split["camids"]))]

    # The planted features' identities and cameras as the one data set evaluated.
    dataset = ReIDDataset([], items(query), items(gallery), tmp_path, required=())
    target = builders.EvalTarget("planted", str(tmp_path), dataset, True)
    monkeypatch.setattr(eval_command, "load_model_for_inference", load_model_for_inference)
    monkeypatch.setattr(builders, "build_eval_targets", lambda *args, **kwargs: [target])
    monkeypatch.setattr(evaluator, "extract_query_gallery", lambda *args, **kwargs: (query, gallery))
    return query, gallery, tmp_path / "results.json"


def expected_percent(query, gallery, **kwargs):
    rows = evaluate_features(
        query["feats"],
        gallery["feats"],
        query["pids"],
        gallery["pids"],
        query["camids"],
        gallery["camids"],
        chunk_size=4096,
        **kwargs,
    )
    return evaluator.to_percent(rows)


def run_eval(capsys, output, *flags):
    code = main(["eval", "--checkpoint", "planted.pth", "--output", str(output), *flags])
    printed = capsys.readouterr().out
    assert code == 0, printed
    return printed, json.loads(output.read_text())


def table_rows(printed):
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("branch"))
    rows = []
    for line in lines[header + 2 :]:
        if not line or line.startswith("results written"):
            break
        rows.append(line.split()[0])
    return lines[header].split(), rows


def test_eval_rerank_flags_add_rk_rows_beside_the_plain_ones(planted, capsys):
    query, gallery, output = planted
    printed, saved = run_eval(capsys, output, "--rerank", "--rerank-k1", "10", "--rerank-lambda", "0.2")
    header, rows = table_rows(printed)
    assert header == ["branch", "rank-1", "rank-5", "rank-10", "mAP", "mINP", "TPR@1e-4", "TPR@1e-3", "TPR@1e-2"]
    assert rows == ["global", "global+rk", "spatial", "spatial+rk", "fusion", "fusion+rk"]
    assert "re-ranking: k1=10, k2=6, lambda_value=0.2" in printed
    assert saved["eval_settings"] == {"rerank": {"k1": 10, "k2": 6, "lambda_value": 0.2}, "query_expansion": None}
    assert saved["results"] == expected_percent(query, gallery, rerank=RerankConfig(10, 6, 0.2))
    assert saved["results"]["fusion+rk"] != saved["results"]["fusion"]


def test_set_keys_and_query_expansion_flags(planted, capsys):
    query, gallery, output = planted
    # a QE setting implies --query-expansion; --set eval.rerank=true switches re-ranking on
    printed, saved = run_eval(
        capsys, output, "--set", "eval.rerank=true", "--set", "eval.rerank_k2=3", "--qe-k", "4", "--qe-alpha", "2"
    )
    assert table_rows(printed)[1] == [
        "global",
        "global+qe",
        "global+qe+rk",
        "spatial",
        "spatial+qe",
        "spatial+qe+rk",
        "fusion",
        "fusion+qe",
        "fusion+qe+rk",
    ]
    assert saved["eval_settings"] == {
        "rerank": {"k1": 20, "k2": 3, "lambda_value": 0.3},
        "query_expansion": {"qe_k": 4, "alpha": 2.0, "qe_times": 1},
    }
    assert saved["results"] == expected_percent(
        query, gallery, rerank=RerankConfig(20, 3, 0.3), query_expansion=QueryExpansionConfig(4, 2.0, 1)
    )


def test_plain_eval_is_unchanged(planted, capsys):
    query, gallery, output = planted
    printed, saved = run_eval(capsys, output)
    assert table_rows(printed)[1] == ["global", "spatial", "fusion"]
    assert saved["eval_settings"] == {"rerank": None, "query_expansion": None}
    assert saved["results"] == expected_percent(query, gallery)


@pytest.mark.parametrize(
    "flags,key",
    [
        (["--rerank-k1", "0"], "eval.rerank_k1"),
        (["--rerank", "--rerank-k2", "22"], "eval.rerank_k2"),
        (["--rerank-lambda", "1.5"], "eval.rerank_lambda"),
        (["--qe-k", "0"], "eval.qe_k"),
        (["--qe-alpha", "-1"], "eval.qe_alpha"),
        (["--set", "eval.rerank=maybe"], "eval.rerank"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(planted, capsys, flags, key):
    _, _, output = planted
    code = main(["eval", "--checkpoint", "planted.pth", "--output", str(output), *flags])
    err = capsys.readouterr().err
    assert code == 2 and key in err and len(err.strip().splitlines()) == 1, err
    assert not output.exists()


def test_config_defaults_and_validation():
    config = load_config()
    assert {
        k: config["eval"][k]
        for k in (
            "rerank",
            "rerank_k1",
            "rerank_k2",
            "rerank_lambda",
            "query_expansion",
            "qe_k",
            "qe_alpha",
            "qe_times",
        )
    } == {
        "rerank": False,
        "rerank_k1": 20,
        "rerank_k2": 6,
        "rerank_lambda": 0.3,
        "query_expansion": False,
        "qe_k": 10,
        "qe_alpha": 3.0,
        "qe_times": 1,
    }
    with pytest.raises(ConfigError, match="eval.qe_times"):
        load_config(None, ["eval.qe_times=0"])
    with pytest.raises(ConfigError, match="eval.rerank_k2 must be an integer from 1 to eval.rerank_k1 \\+ 1 = 3"):
        load_config(None, ["eval.rerank_k1=2", "eval.rerank_k2=4"])


def test_format_table_widens_for_long_row_names():
    rows = {
        "global": {"rank1": 0.5, "mAP": 0.25},
        "fusion": {"rank1": 0.75, "mAP": 0.5},
        "global+qe+rk": {"rank1": 1.0, "mAP": 0.75},
        "fusion+rk": {"rank1": 1.0, "mAP": 1.0},
    }
    lines = evaluator.format_table(rows, metrics=("rank1", "mAP")).splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["global", "global+qe+rk", "fusion", "fusion+rk"]
    assert len({len(line) for line in lines}) == 1
    assert np.isclose(float(lines[3].split()[2]), 75.0)
