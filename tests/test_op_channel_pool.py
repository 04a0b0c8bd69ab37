"""channel_pool: what is particular to it -- fp64 gradcheck of the eager reference, torch.compile tracing,
the max's tie-breaking and bad input. (Every backend against the fp64 reference: test_ops_reference.py.)"""

import pytest
import torch
from op_contract import compiled_matches_eager
from op_harness import device_backends, random_cases

from scstn_vcn import ops

OP = "channel_pool"
FUSED = [b for d, b in device_backends(fused_only=True) if d == "cpu"]


def test_eager_gradcheck_fp64():
    for case in random_cases(OP, 4, seed=12, limits=(2, 5, 5, 4)):
        x = case.values["x"].clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda t: ops.channel_pool(t, backend="eager"), (x,))


@pytest.mark.parametrize("backend", ["eager"] + FUSED)
def test_torch_compile_fullgraph(backend):
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    compiled_matches_eager(lambda t: torch.cat([o.flatten() for o in ops.channel_pool(t, backend=backend)]), [x])


@pytest.mark.parametrize("backend", ops.available_backends("cpu"))
def test_max_gradient_goes_to_first_maximum(backend):
    # every element equal: all tie, and the max's gradient must go to the first one (h = w = 0)
    x = torch.ones(1, 2, 3, 4, requires_grad=True)
    _, gpool = ops.channel_pool(x, backend=backend)
    gpool.sum().backward()
    expected = torch.full((1, 2, 3, 4), 1 / 12)
    expected[:, :, 0, 0] += 1
    torch.testing.assert_close(x.grad, expected)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match=r"x must be 4-D \(B, C, H, W\)"):
        ops.channel_pool(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64, got torch.int64"):
        ops.channel_pool(torch.ones(1, 2, 3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ops.channel_pool([[1.0]])
    with pytest.raises(ValueError, match="x must have no zero-sized dimension"):
        ops.channel_pool(torch.randn(1, 0, 3, 4))
    with pytest.raises(ValueError, match="backend must be one of 'eager', 'triton', 'native', got 'cuda'"):
        ops.channel_pool(torch.randn(1, 2, 3, 4), backend="cuda")
    with pytest.raises(ops.BackendUnavailableError, match="'native' is not available for meta tensors"):
        ops.channel_pool(torch.randn(1, 2, 3, 4, device="meta"), backend="native")
