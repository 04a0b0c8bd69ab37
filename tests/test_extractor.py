"""scstn_vcn.FeatureExtractor: a checkpoint or model file as a function from images to the features evaluation
uses."""

import numpy as np
import pytest
import torch
from PIL import Image

import scstn_vcn
from scstn_vcn import ops
from scstn_vcn.configs import load_config
from scstn_vcn.engine.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint path, data set): a tiny full model trained for one short epoch on a small synthetic set."""
    from scstn_vcn.data import build_dataset, make_synthetic
    from scstn_vcn.engine.trainer import Trainer

    base = tmp_path_factory.mktemp("extractor")
    root = make_synthetic(
        base / "data",
        num_identities=8,
        seed=0,
        images_per_identity=4,
        gallery_per_identity=3,
        query_per_identity=1,
        num_distractors=2,
        num_junk=1,
    )
    overrides = [
        ("data.root", str(root)),
        ("data.name", "synthetic"),
        ("data.height", 64),
        ("data.width", 32),
        ("data.num_identities", 4),
        ("data.num_instances", 2),
        ("data.workers", 0),
        ("eval.workers", 0),
        ("eval.batch_size", 8),
        ("train.output", str(base / "run")),
        ("train.epochs", 1),
        ("train.max_steps_per_epoch", 2),
        ("optim.warmup_epochs", 1),
    ]
    config = load_config("demo", [(key.split("."), value) for key, value in overrides])
    trainer = Trainer(config, progress=False, say=lambda *a: None)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer.checkpoint_path, build_dataset("synthetic", str(root))


def _evaluator_features(extractor, dataset):
    from scstn_vcn.engine.evaluator import extract_query_gallery

    query, gallery = extract_query_gallery(extractor.model, dataset, extractor.config, extractor.device)
    return query, gallery


def test_features_equal_the_evaluators(trained):
    checkpoint, dataset = trained
    fe = scstn_vcn.FeatureExtractor(checkpoint, device="cpu", batch_size=8)  # the eval batch size of the run
    query, gallery = _evaluator_features(fe, dataset)
    q = fe([item[0] for item in dataset.query])
    g = fe([item[0] for item in dataset.gallery])
    assert set(q) == {"global", "spatial"}
    for name in ("global", "spatial"):
        assert q[name].dtype == torch.float32 and q[name].device.type == "cpu"
        assert torch.equal(q[name], query["feats"][name]), name
        assert torch.equal(g[name], gallery["feats"][name]), name
    # Another batch size gives the same features up to float rounding (BN runs on running statistics).
    other = scstn_vcn.FeatureExtractor(checkpoint, device="cpu", batch_size=3)([item[0] for item in dataset.query])
    for name in ("global", "spatial"):
        torch.testing.assert_close(other[name], q[name], rtol=1e-5, atol=1e-5)


def test_a_model_file_gives_the_checkpoints_features(trained, tmp_path):
    from scstn_vcn.engine import model_file

    checkpoint, dataset = trained
    source = model_file.open_model_source(checkpoint)
    exported = tmp_path / "model.safetensors"
    model_file.save_model_file(exported, model_file.build_inference_model(source), source.config, source.identity)
    paths = [item[0] for item in dataset.query + dataset.gallery]
    a = scstn_vcn.FeatureExtractor(checkpoint, device="cpu")(paths)
    b = scstn_vcn.FeatureExtractor(exported, device="cpu")(paths)
    for name in ("global", "spatial"):
        assert torch.equal(a[name], b[name]), name


def test_distance_ranks_as_the_evaluation_fuses(trained):
    from scstn_vcn.metrics import cosine_distance, evaluate_features, evaluate_rank_full

    checkpoint, dataset = trained
    fe = scstn_vcn.FeatureExtractor(checkpoint, device="cpu", batch_size=8)
    query, gallery = _evaluator_features(fe, dataset)
    q, g = fe([it[0] for it in dataset.query]), fe([it[0] for it in dataset.gallery])
    dist = fe.distance(q, g)
    assert dist.shape == (len(dataset.query), len(dataset.gallery))
    assert torch.equal(dist, cosine_distance(q["global"], g["global"]) + cosine_distance(q["spatial"], g["spatial"]))
    assert torch.equal(fe.distance(q, g, branch="spatial"), cosine_distance(q["spatial"], g["spatial"]))
    expected = evaluate_features(
        query["feats"], gallery["feats"], query["pids"], gallery["pids"], query["camids"], gallery["camids"]
    )["fusion"]
    got = evaluate_rank_full(
        dist.numpy(), query["pids"].numpy(), gallery["pids"].numpy(), query["camids"].numpy(), gallery["camids"].numpy()
    )
    assert got["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    assert got["cmc"][0] == pytest.approx(expected["rank1"], abs=1e-6)
    with pytest.raises(ValueError, match="branch must be 'fusion' or one of 'global', 'spatial'"):
        fe.distance(q, g, branch="both")


def test_pil_numpy_and_tensor_inputs_give_the_same_features(trained):
    from scstn_vcn.data.transforms import build_transforms

    checkpoint, dataset = trained
    fe = scstn_vcn.FeatureExtractor(checkpoint, device="cpu", batch_size=4)
    paths = [item[0] for item in dataset.gallery[:5]]
    by_path = fe(paths)
    pil = [Image.open(p).convert("RGB") for p in paths]
    arrays = [np.asarray(image) for image in pil]
    batch = torch.stack([build_transforms(64, 32, is_train=False)(image) for image in pil])
    for other in (fe(pil), fe(arrays), fe(batch)):
        for name in by_path:
            assert torch.equal(other[name], by_path[name]), name
    single = fe(paths[0])  # one image alone is a batch of one
    assert single["global"].shape == (1, by_path["global"].shape[1])


def test_bad_inputs_are_named(trained, tmp_path):
    checkpoint, dataset = trained
    fe = scstn_vcn.FeatureExtractor(checkpoint, device="cpu")
    with pytest.raises(ValueError, match=r"images\[1\]: a numpy image must be uint8 RGB"):
        fe([np.zeros((64, 32, 3), np.uint8), np.zeros((64, 32), np.uint8)])
    with pytest.raises(TypeError, match=r"images\[0\]: expected an image path"):
        fe([42])
    with pytest.raises(ValueError, match="trained on 64x32 inputs, got a 32x32 batch"):
        fe(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="no images given"):
        fe([])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        fe([dataset.query[0][0], str(broken)])
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        fe([str(tmp_path / "missing.jpg")])
    with pytest.raises(CheckpointError, match="nothing.pth: no such file"):
        scstn_vcn.FeatureExtractor(tmp_path / "nothing.pth")
    with pytest.raises(ValueError, match="amp must be"):
        scstn_vcn.FeatureExtractor(checkpoint, amp="fp8")


def test_fused_backends(trained, monkeypatch):
    checkpoint, dataset = trained
    paths = [item[0] for item in dataset.query[:2]]
    reference = scstn_vcn.FeatureExtractor(checkpoint, device="cpu", backend="eager")(paths)
    for backend in ("native", "triton"):
        ok, why = ops.backend_status(backend, "cpu")
        if not ok:
            with pytest.raises(ops.BackendUnavailableError, match=backend):
                scstn_vcn.FeatureExtractor(checkpoint, device="cpu", backend=backend)
            continue
        fe = scstn_vcn.FeatureExtractor(checkpoint, device="cpu", backend=backend)
        before = ops.get_backend()
        feats = fe(paths)
        assert ops.get_backend() == before  # the backend applies to the extractor's calls only
        for name in reference:
            torch.testing.assert_close(feats[name], reference[name], rtol=1e-4, atol=1e-4)
    # A backend that cannot run here is refused, not replaced.
    monkeypatch.setattr("scstn_vcn.ops._backend.triton_interpreting", lambda: False)
    with pytest.raises(ops.BackendUnavailableError, match="'triton' is not available on cpu"):
        scstn_vcn.FeatureExtractor(checkpoint, device="cpu", backend="triton")


def test_rank_gallery_skips_the_query_itself_and_keeps_ties_in_order(tmp_path):
    from scstn_vcn.commands.search import rank_gallery

    gallery = [str(tmp_path / name) for name in ("a.jpg", "b.jpg", "q.jpg", "c.jpg")]
    ranked = rank_gallery(torch.tensor([0.5, 0.2, 0.0, 0.2]), gallery, str(tmp_path / "." / "q.jpg"), topk=2)
    assert ranked == [(1, 1, pytest.approx(0.2)), (2, 3, pytest.approx(0.2))]
    assert [index for _, index, _ in rank_gallery([0.5, 0.2, 0.0, 0.2], gallery, "elsewhere.jpg", 10)] == [2, 1, 3, 0]
