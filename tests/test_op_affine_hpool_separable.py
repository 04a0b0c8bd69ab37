"""affine_hpool's separable path (rotation_free=True): what is particular to it -- theta's off-diagonal
entries taken as 0 with gradient 0, agreement with the general path for rotation-free theta, fp64
gradchecks, torch.compile tracing, bad input, and the model choosing the path from its transformer.
(Every backend against the fp64 reference on random cases: test_ops_reference.py.)"""

import functools
import importlib

import pytest
import torch
from op_contract import all_samples_outside_give_zero, compiled_matches_eager
from op_harness import device_backends, random_cases

from scstn_vcn import ops
from scstn_vcn.models import ABLATIONS, build_model

OP = "affine_hpool_separable"
FUSED = [b for d, b in device_backends(fused_only=True) if d == "cpu"]
BACKENDS = ops.available_backends("cpu")
# the module (scstn_vcn.ops re-exports a function of the same name)
separable_module = importlib.import_module("scstn_vcn.ops.affine_hpool_separable")
MASK = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)


def separable(backend):
    return lambda x, theta: ops.affine_hpool(x, theta, rotation_free=True, backend=backend)


def _case(seed, kind="norot", shape=(2, 3, 7, 5)):
    gen = torch.Generator().manual_seed(seed)
    # offset so that no row's maximum is one of the exact zeros an outside sample reads
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) + 4
    batch = shape[0]
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = 1 + 0.3 * (torch.rand(batch, generator=gen, dtype=torch.float64) - 0.5)
    theta[:, 1, 1] = 1 + 0.3 * (torch.rand(batch, generator=gen, dtype=torch.float64) - 0.5)
    theta[:, :, 2] = 0.4 * (torch.rand(batch, 2, generator=gen, dtype=torch.float64) - 0.5)
    if kind == "general":  # rotation and shear, which the separable path must ignore
        theta[:, 0, 1] = 0.3
        theta[:, 1, 0] = -0.25
    elif kind == "outside":
        theta[:, :, 2] += 0.9
    return x, theta


def test_eager_reference_is_the_general_op_on_the_masked_theta():
    for case in random_cases(OP, 8, seed=41):
        x, theta = case.values["x"], case.values["theta"]
        expected = ops.affine_hpool(x, theta * MASK, backend="eager")
        assert torch.equal(ops.affine_hpool_separable_eager(x, theta), expected)


@pytest.mark.parametrize("backend", ["eager"] + FUSED)
@pytest.mark.parametrize("kind", ["norot", "general", "outside"])
def test_gradcheck_fp64(backend, kind):
    # the Triton interpreter takes seconds per evaluation: a smaller map there
    shape = (1, 2, 5, 3) if backend == "triton" else (2, 3, 7, 5)
    x, theta = _case(3, kind, shape)
    assert torch.autograd.gradcheck(separable(backend), (x.requires_grad_(), theta.requires_grad_()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_general_theta_gives_the_masked_result_and_no_off_diagonal_gradient(backend):
    x, theta = _case(5, "general", shape=(3, 4, 6, 5))
    x, theta = x.float().requires_grad_(), theta.float().requires_grad_()
    out = ops.affine_hpool(x, theta, rotation_free=True, backend=backend)
    masked = (theta.detach() * MASK.float()).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    expected = ops.affine_hpool(x_ref, masked, backend="eager")
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    expected.backward(upstream)
    assert torch.equal(theta.grad[:, 0, 1], torch.zeros(3)) and torch.equal(theta.grad[:, 1, 0], torch.zeros(3))
    torch.testing.assert_close(theta.grad, masked.grad * MASK.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_the_general_path_for_rotation_free_theta(backend):
    x, theta = _case(7, "norot", shape=(3, 37, 9, 8))  # two channel tiles, a partial lane group
    results = []
    for rotation_free in (False, True):
        a, t = x.detach().clone().requires_grad_(), theta.detach().clone().requires_grad_()
        out = ops.affine_hpool(a, t, rotation_free=rotation_free, backend=backend)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
        results.append((out, a.grad, t.grad * MASK))  # the general op also differentiates theta01, theta10
    for general, fast in zip(*results):
        torch.testing.assert_close(fast, general, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["eager"] + FUSED)
def test_torch_compile_fullgraph(backend):
    x, theta = _case(9, "general", shape=(2, 3, 5, 4))
    compiled_matches_eager(separable(backend), [x, theta])


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_samples_outside_give_zero(backend):
    all_samples_outside_give_zero(
        lambda a, t: ops.affine_hpool(a, t, rotation_free=True, backend=backend), [[1.0, 0.4, 5.0], [0.2, 1.0, 0.0]]
    )


def test_bad_inputs_name_the_argument():
    x = torch.randn(2, 3, 4, 5)
    theta = torch.zeros(2, 2, 3)
    for backend in BACKENDS:
        call = functools.partial(ops.affine_hpool, rotation_free=True, backend=backend)
        with pytest.raises(ValueError, match=r"theta must be 3-D \(B, 2, 3\)"):
            call(x, torch.zeros(2, 6))
        with pytest.raises(
            ValueError, match=r"theta must have shape \(B, 2, 3\) = \(2, 2, 3\) to match x, got shape \(3"
        ):
            call(x, torch.zeros(3, 2, 3))
        with pytest.raises(TypeError, match="theta must be float16, bfloat16, float32 or float64, got torch.int32"):
            call(x, theta.int())
        with pytest.raises(TypeError, match=r"x must be a torch.Tensor \(B, C, H, W\), got list"):
            call([1.0], theta)
        with pytest.raises(ValueError, match=r"x must be 4-D"):
            call(x[0], theta)
        with pytest.raises(ValueError, match="theta must be on the same device as x"):
            call(x, theta.to("meta"))
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.affine_hpool(x, theta, rotation_free=True, backend="fast")


# --- the model decides the path from its transformer's configuration ---------------------------------


def _count_separable_calls(monkeypatch):
    calls = []
    original = separable_module.affine_hpool_separable

    def spy(x, theta, *, backend=None):
        calls.append(tuple(x.shape))
        return original(x, theta, backend=backend)

    monkeypatch.setattr(separable_module, "affine_hpool_separable", spy)
    return calls


@pytest.mark.parametrize(
    "ablation, rotation_free",
    [
        ("full", True),  # SC-STN
        ("scstn_eps1", True),
        ("scstn_eps_fixed", True),
        ("stn_no_rotation", True),
        ("vcn_shared", True),
        ("plain_stn", False),  # 6 free factors: the general path
    ],
)
def test_model_takes_the_separable_path_exactly_for_rotation_free_transformers(monkeypatch, ablation, rotation_free):
    torch.manual_seed(0)
    model = build_model(None, backbone="tiny", input_size=(64, 32), **ABLATIONS[ablation].model).eval()
    assert model.stn.rotation_free is rotation_free
    calls = _count_separable_calls(monkeypatch)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 32))
    assert len(calls) == (1 if rotation_free else 0)


@pytest.mark.parametrize("head", ["gp", "fc", "mgn", "vcn_no_hpool"])
def test_resampling_heads_mask_theta_of_a_rotation_free_transformer(head):
    """The heads that materialise M^r take theta's off-diagonal entries as 0 when told rotation_free."""
    from scstn_vcn.models import build_head

    torch.manual_seed(0)
    module = build_head(head, 3, 6, 4, num_kernels=2)
    M = torch.randn(2, 3, 6, 4)
    _, theta = _case(11, "general", shape=(2, 3, 6, 4))
    theta = theta.float()
    torch.testing.assert_close(module(M, theta, rotation_free=True), module(M, theta * MASK.float()))
    assert not torch.allclose(module(M, theta, rotation_free=False), module(M, theta * MASK.float()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_separable_path_equals_the_general_path(monkeypatch, backend):
    """SC-STN's theta has no rotation: switching its model to the general path changes nothing."""
    torch.manual_seed(0)
    model = build_model(None, backbone="tiny", input_size=(64, 32)).eval()
    with torch.no_grad():  # move theta away from the identity
        model.stn.bn2.weight.fill_(1.0)
        model.stn.bn2.bias.uniform_(-0.5, 0.5)
    images = torch.randn(2, 3, 64, 32)
    with ops.use_backend(backend), torch.no_grad():
        fast = model(images, return_theta=True)
        assert fast["theta"][:, 0, 0].ne(1).all()
        monkeypatch.setattr(model.stn, "rotation_free", False)
        general = model(images)
    torch.testing.assert_close(fast["spatial"], general["spatial"], rtol=1e-5, atol=1e-5)
