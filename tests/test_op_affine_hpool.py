"""affine_hpool: what is particular to it -- fp64 gradcheck of the eager reference, torch.compile tracing,
samples wholly outside the map and bad input. (Every backend against the fp64 reference: test_ops_reference.py.)"""

import pytest
import torch
from op_contract import all_samples_outside_give_zero, compiled_matches_eager
from op_harness import device_backends, random_cases

from scstn_vcn import ops

OP = "affine_hpool"
FUSED = [b for d, b in device_backends(fused_only=True) if d == "cpu"]


def test_eager_gradcheck_fp64():
    for case in random_cases(OP, 4, seed=22, limits=(2, 3, 5, 4)):
        x = case.values["x"].clone().requires_grad_()
        theta = case.values["theta"].clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b: ops.affine_hpool(a, b, backend="eager"), (x, theta))


@pytest.mark.parametrize("backend", ["eager"] + FUSED)
def test_torch_compile_fullgraph(backend):
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    theta = torch.tensor(
        [[[0.9, 0.0, 0.1], [0.0, 1.1, -0.2]], [[1.2, 0.3, 0.0], [-0.2, 0.8, 0.4]]], dtype=torch.float64
    )
    compiled_matches_eager(lambda a, b: ops.affine_hpool(a, b, backend=backend), [x, theta])


@pytest.mark.parametrize("backend", ops.available_backends("cpu"))
def test_all_samples_outside_give_zero(backend):
    all_samples_outside_give_zero(
        lambda a, t: ops.affine_hpool(a, t, backend=backend), [[1.0, 0.0, 5.0], [0.0, 1.0, 0.0]]
    )


def test_bad_inputs_name_the_argument():
    x = torch.randn(2, 3, 4, 5)
    theta = torch.zeros(2, 2, 3)
    with pytest.raises(ValueError, match=r"theta must be 3-D \(B, 2, 3\)"):
        ops.affine_hpool(x, torch.zeros(2, 6))
    with pytest.raises(
        ValueError, match=r"theta must have shape \(B, 2, 3\) = \(2, 2, 3\) to match x, got shape \(3, 2, 3\)"
    ):
        ops.affine_hpool(x, torch.zeros(3, 2, 3))
    with pytest.raises(ValueError, match=r"theta must have shape .* got shape \(2, 3, 3\)"):
        ops.affine_hpool(x, torch.zeros(2, 3, 3))
    with pytest.raises(TypeError, match="theta must be float16, bfloat16, float32 or float64, got torch.int32"):
        ops.affine_hpool(x, theta.int())
    with pytest.raises(ValueError, match=r"x must be 4-D"):
        ops.affine_hpool(x[0], theta)
    with pytest.raises(ValueError, match="theta must be on the same device as x"):
        ops.affine_hpool(x, theta.to("meta"))
