"""The backend setting and the availability reports."""

import pytest
import torch

from scstn_vcn import ops


def test_default_backend_is_eager_and_settable():
    assert ops.get_backend() == "eager"
    with ops.use_backend("eager"):
        assert ops.get_backend() == "eager"
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.set_backend("fast")
    assert ops.get_backend() == "eager"


def test_eager_is_always_available():
    assert "eager" in ops.available_backends("cpu")
    assert ops.backend_status("eager", "cuda") == (True, "")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reports of a machine without a GPU")
def test_unavailable_backends_say_why():
    ok, why = ops.backend_status("triton", "cuda")
    assert not ok and "no CUDA device" in why
    ok, why = ops.backend_status("native", "cuda")
    assert not ok and ("CUDA" in why)
    # no CUDA tensor can be made here, so ask the resolver the ops use directly
    with pytest.raises(
        ops.BackendUnavailableError, match="backend 'triton' is not available for cuda tensors: no CUDA device"
    ):
        ops._backend.resolve("triton", "cuda")


def test_process_wide_setting_switches_the_ops():
    x = torch.randn(2, 3, 4, 5)
    with ops.use_backend("eager"):
        cmean, gpool = ops.channel_pool(x)
    torch.testing.assert_close(cmean, x.mean(1))
    for name in ops.available_backends("cpu"):
        with ops.use_backend(name):
            torch.testing.assert_close(ops.channel_pool(x)[1], gpool)


def test_process_wide_setting_switches_the_separable_path():
    x = torch.randn(2, 3, 4, 5)
    theta = torch.tensor([[[0.9, 0.3, 0.1], [-0.2, 1.1, 0.0]]]).expand(2, 2, 3)
    expected = ops.affine_hpool_separable_eager(x, theta)
    for name in ops.available_backends("cpu"):
        with ops.use_backend(name):
            torch.testing.assert_close(ops.affine_hpool(x, theta, rotation_free=True), expected)


def test_native_is_available_only_with_the_separable_kernels():
    """The native backend's status covers every registered op, the separable pair included, so that a
    build without them reports itself broken instead of failing inside the model."""
    from scstn_vcn.ops import _backend
    from scstn_vcn.ops._wiring import SCHEMAS

    assert set(_backend._NATIVE_OPS) == {f"scstn_vcn::{name}" for name in SCHEMAS}
