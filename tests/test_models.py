"""build_model: backbone variants, output dicts, the exact parameter count, pretrained loading, every
Table 3 row, torch.compile and the native backend."""

import pytest
import torch
import torchvision
from torch import nn

import scstn_vcn.ops as ops
from scstn_vcn.losses import ReIDLoss
from scstn_vcn.models import ABLATIONS, build_backbone, build_model

SMALL = (64, 32)  # tiny backbone, output stride 16 -> 4 x 2 map (8 x 4 for "M")
LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


class _Cached(nn.Module):
    """Stands in for a backbone whose output map was already computed once."""

    def __init__(self, M):
        super().__init__()
        self.M = M

    def forward(self, images):
        return self.M


@pytest.mark.parametrize("variant, size", [("O", (24, 8)), ("M", (48, 16))])
def test_resnet50_output_shapes(variant, size):
    model = build_model(10, backbone="resnet50", variant=variant).eval()
    images = torch.randn(2, 3, 384, 128)
    seen = {}
    model.backbone.register_forward_hook(lambda module, args, out: seen.setdefault("M", out))
    with torch.no_grad():
        out = model(images, return_theta=True)  # the one (slow) ResNet-50 forward of this test
        assert seen["M"].shape == (2, 2048, *size)
        assert out["global"].shape == (2, 2048) and out["spatial"].shape == (2, 12_288)
        assert out["theta"].shape == (2, 2, 3)
        # train mode on the same map (the backbone's output shape does not depend on the mode)
        model.backbone = _Cached(seen["M"])
        out = model.train()(images)
    assert set(out) == {"global", "spatial"}
    assert out["global"]["features"].shape == (2, 2048) and out["global"]["logits"].shape == (2, 10)
    assert out["spatial"]["features"].shape == (2, 12_288) and out["spatial"]["logits"].shape == (2, 10)


def test_parameter_count_of_the_full_resnet50_o_model():
    model = build_model(751, backbone="resnet50", variant="O")
    # 23,508,032 ResNet-50 without fc + SC-STN 25,615 + VCN 294,912 + BN 4,096 + BN 24,576 (Table 4)
    assert model.num_parameters() == 23_857_231
    assert sum(p.numel() for p in model.backbone.parameters()) == 23_508_032
    assert sum(p.numel() for p in model.stn.parameters()) == 25_615
    assert sum(p.numel() for p in model.head.parameters()) == 294_912
    assert model.num_parameters(include_classifiers=True) == 23_857_231 + 751 * (2048 + 12_288)
    # variant M adds no backbone parameter
    assert sum(p.numel() for p in build_backbone("resnet50", "M").parameters()) == 23_508_032


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "tiny"])
def test_smaller_backbones_and_their_strides(name):
    for variant, stride in (("O", 16), ("M", 8)):
        backbone = build_backbone(name, variant).eval()
        with torch.no_grad():
            M = backbone(torch.randn(1, 3, 70, 30))  # odd sizes: each stride-2 stage gives ceil(n / 2)
        assert M.shape[2:] == backbone.feature_size((70, 30)) == (-(-70 // stride), -(-30 // stride))
        assert M.shape[1] == backbone.out_channels
    tiny_params = sum(p.numel() for p in build_backbone("tiny").parameters())
    assert 5_000 <= tiny_params <= 1_000_000


def test_eval_and_train_outputs_and_theta():
    torch.manual_seed(0)
    model = build_model(3, backbone="tiny", input_size=SMALL)
    images = torch.randn(6, 3, *SMALL)
    out = model(images, return_theta=True)
    assert out["global"]["features"].shape == (6, 128) and out["spatial"]["logits"].shape == (6, 3)
    torch.testing.assert_close(out["theta"], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(6, 2, 3))
    model.eval()
    out = model(images)
    assert set(out) == {"global", "spatial"} and out["spatial"].shape == (6, 128 * 6)
    assert model.feature_dims == {"global": 128, "spatial": 768}
    extractor = build_model(None, backbone="tiny", input_size=SMALL).eval()
    assert extractor(images)["global"].shape == (6, 128)
    with pytest.raises(RuntimeError, match="num_classes"):
        extractor.train()(images)


def test_model_computes_channel_pool_once(monkeypatch):
    calls = []
    original = ops.channel_pool
    monkeypatch.setattr(ops, "channel_pool", lambda x, **kw: calls.append(x.shape) or original(x, **kw))
    build_model(3, backbone="tiny", input_size=SMALL)(torch.randn(4, 3, *SMALL))
    assert calls == [torch.Size([4, 128, 4, 2])]


def test_wrong_input_size_and_bad_arguments():
    model = build_model(3, backbone="tiny", input_size=SMALL)
    with pytest.raises(ValueError, match=r"input_size=\(64, 32\)"):
        model(torch.randn(2, 3, 96, 32))
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_model(3, backbone="vgg16")
    with pytest.raises(ValueError, match="variant must be"):
        build_model(3, backbone="tiny", variant="X")
    with pytest.raises(ValueError, match="head must be one of"):
        build_model(3, backbone="tiny", head="pcb")
    with pytest.raises(ValueError, match="stn must be one of"):
        build_model(3, backbone="tiny", stn="affine")
    with pytest.raises(ValueError, match="neither"):
        build_model(3, backbone="tiny", global_branch=False, spatial_branch=False)


# --- Table 3 -----------------------------------------------------------------------------------------

EXPECTED_ROWS = {
    "baseline",
    "spatial_only",
    "vcn_no_stn",
    "plain_stn",
    "stn_no_rotation",
    "scstn_eps1",
    "scstn_eps_fixed",
    "gp_head",
    "fc_head",
    "vcn_no_hpool",
    "vcn_shared",
    "mgn_stripes",
    "no_rll",
    "full",
}
SPATIAL_DIMS = {"gp_head": 128, "mgn_stripes": 5 * 128}


def test_ablations_cover_table3():
    assert set(ABLATIONS) == EXPECTED_ROWS
    assert ABLATIONS["no_rll"].loss == {"use_rll": False} and ABLATIONS["no_rll"].model == {}
    assert all(not ab.loss for name, ab in ABLATIONS.items() if name != "no_rll")


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_every_ablation_trains_one_step(name):
    torch.manual_seed(0)
    ablation = ABLATIONS[name]
    model = build_model(3, backbone="tiny", input_size=SMALL, **ablation.model)
    criterion = ReIDLoss(3, **ablation.loss)
    out = model(torch.randn(6, 3, *SMALL))
    branches = {"baseline": {"global"}, "spatial_only": {"spatial"}}.get(name, {"global", "spatial"})
    assert set(out) == branches
    if "spatial" in out:
        assert out["spatial"]["features"].shape == (6, SPATIAL_DIMS.get(name, 128 * 6))
    total, parts = criterion(out, LABELS)
    assert torch.isfinite(total)
    assert any(k.endswith("_rll") for k in parts) == (name != "no_rll")
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: no gradient reached {missing}"


# --- pretrained weights --------------------------------------------------------------------------------


def test_pretrained_torchvision_state_dict_loads(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # includes fc.*, which must be ignored
    model = build_model(5, backbone="resnet18", pretrained=str(path))
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[key], rtol=0, atol=0)


def test_pretrained_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model(5, backbone="tiny", pretrained=missing)
    state = build_backbone("tiny").state_dict()
    state.pop("layer4.0.conv2.weight")
    state["layer1.0.conv1.weight"] = torch.zeros(1, 1, 3, 3)
    state["head.extra"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(
        ValueError,
        match=r"bad\.pth.*missing keys: layer4\.0\.conv2\.weight.*"
        r"unexpected keys: head\.extra.*layer1\.0\.conv1\.weight",
    ):
        build_model(5, backbone="tiny", pretrained=bad)
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        build_model(5, backbone="tiny", pretrained=junk)


# --- compile and backends ------------------------------------------------------------------------------


def test_torch_compile_fullgraph_traces_the_model():
    torch.manual_seed(0)
    model = build_model(3, backbone="tiny", input_size=SMALL).eval()
    with torch.no_grad():
        model.stn.bn2.weight.fill_(1.0)  # a non-identity theta
    images = torch.randn(4, 3, *SMALL)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        expected, got = model(images, return_theta=True), compiled(images, return_theta=True)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])
    # a whole training step's forward (train-mode model + Eq. 8 loss) traces as one graph too
    criterion = ReIDLoss(3)

    def loss_of(images, labels):
        return criterion(model(images), labels)[0]

    model.train()
    compiled_loss = torch.compile(loss_of, fullgraph=True, backend="eager")
    images = torch.randn(6, 3, *SMALL)
    got = compiled_loss(images, LABELS)
    got.backward()
    torch.testing.assert_close(got, loss_of(images, LABELS))


@pytest.mark.skipif("native" not in ops.available_backends("cpu"), reason="the native CPU kernels are not built")
@pytest.mark.parametrize("name", ["full", "vcn_no_stn", "gp_head"])
def test_native_backend_matches_eager(name):
    torch.manual_seed(0)
    model = build_model(3, backbone="tiny", input_size=SMALL, **ABLATIONS[name].model)
    if model.stn is not None:
        with torch.no_grad():
            model.stn.bn2.weight.fill_(1.0)  # a non-identity theta exercises the resampling
    images = torch.randn(6, 3, *SMALL)
    results = {}
    for backend in ("eager", "native"):
        model.zero_grad()
        with ops.use_backend(backend):
            out = model(images, return_theta=True)
            total, _ = ReIDLoss(3)(out, LABELS)
            total.backward()
        results[backend] = (out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (eager_out, eager_grads), (native_out, native_grads) = results["eager"], results["native"]
    for branch in ("global", "spatial"):
        for part in ("features", "logits"):
            torch.testing.assert_close(native_out[branch][part], eager_out[branch][part], atol=1e-4, rtol=1e-4)
    assert eager_grads.keys() == native_grads.keys()
    for key in eager_grads:
        torch.testing.assert_close(native_grads[key], eager_grads[key], atol=1e-3, rtol=1e-3, msg=key)
