"""vertical_proj: what is particular to it -- fp64 gradcheck of the eager reference, torch.compile tracing,
mixed dtypes and bad input. (Every backend against the fp64 reference: test_ops_reference.py.)"""

import pytest
import torch
from op_contract import compiled_matches_eager
from op_harness import device_backends, random_cases

from scstn_vcn import ops

OP = "vertical_proj"
FUSED = [b for d, b in device_backends(fused_only=True) if d == "cpu"]


def test_eager_gradcheck_fp64():
    for case in random_cases(OP, 4, seed=32, limits=(2, 4, 5, 1)):
        F = case.values["F"].clone().requires_grad_()
        delta = case.values["delta"].clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b: ops.vertical_proj(a, b, backend="eager"), (F, delta))


@pytest.mark.parametrize("backend", ["eager"] + FUSED)
def test_torch_compile_fullgraph(backend):
    F = torch.randn(3, 5, 7, dtype=torch.float64)
    delta = torch.randn(5, 6, 7, dtype=torch.float64)
    compiled_matches_eager(lambda a, b: ops.vertical_proj(a, b, backend=backend), [F, delta])


def test_mixed_dtypes_return_F_dtype():
    F = torch.randn(2, 3, 4, dtype=torch.bfloat16)
    delta = torch.randn(3, 2, 4, dtype=torch.float32, requires_grad=True)
    f = ops.vertical_proj(F, delta, backend="eager")
    assert f.dtype == torch.bfloat16
    f.float().sum().backward()
    assert delta.grad.dtype == torch.float32


def test_bad_inputs_name_the_argument():
    F = torch.randn(2, 3, 4)
    with pytest.raises(
        ValueError, match=r"delta must have shape \(C, K, H\) with C = 3 and H = 4 to match F, got shape \(3, 6, 5\)"
    ):
        ops.vertical_proj(F, torch.randn(3, 6, 5))
    with pytest.raises(ValueError, match=r"F must be 3-D \(B, C, H\)"):
        ops.vertical_proj(F[0], torch.randn(3, 6, 4))
    with pytest.raises(TypeError, match="delta must be float16, bfloat16, float32 or float64, got torch.int64"):
        ops.vertical_proj(F, torch.ones(3, 6, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="delta must be on the same device as F"):
        ops.vertical_proj(F, torch.randn(3, 6, 4, device="meta"))
