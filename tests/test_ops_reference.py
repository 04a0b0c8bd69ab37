"""The three ops (affine_hpool also on its separable, rotation-free path) on every available backend (and
device) against the float64 eager reference on random cases (odd sizes, samples outside the map,
non-contiguous and channels_last inputs, fp16/bf16), the
registered ops under torch.library.opcheck, and the bitwise determinism of the fused backwards."""

import pytest
from op_contract import backward_is_bitwise_deterministic, opcheck_forward_and_backward
from op_harness import assert_close_to_reference, device_backends, random_cases

OPS = ("channel_pool", "affine_hpool", "affine_hpool_separable", "vertical_proj")
# >= 50 random cases per op; affine_hpool (general and separable), with four kinds of theta, gets a few more
CASES = [
    pytest.param(op, case, id=repr(case))
    for op, count, seed in (
        ("channel_pool", 50, 11),
        ("affine_hpool", 60, 21),
        ("affine_hpool_separable", 60, 23),
        ("vertical_proj", 50, 31),
    )
    for case in random_cases(op, count, seed)
]
CPU_FUSED = [backend for device, backend in device_backends(fused_only=True) if device == "cpu"]


@pytest.mark.parametrize("device,backend", device_backends())
@pytest.mark.parametrize("op,case", CASES)
def test_matches_fp64_eager(op, case, device, backend):
    assert_close_to_reference(op, case, backend, device)


@pytest.mark.parametrize("backend", CPU_FUSED)
@pytest.mark.parametrize("op", OPS)
def test_opcheck(op, backend):
    for case in random_cases(op, 2, seed=13):  # a float32 and a float64 case
        opcheck_forward_and_backward(op, backend, case)


@pytest.mark.parametrize("backend", CPU_FUSED)
@pytest.mark.parametrize("op", OPS)
def test_backward_bitwise_deterministic(op, backend):
    for case in random_cases(op, 4, seed=14):
        backward_is_bitwise_deterministic(op, backend, case)
