"""Triton-specific tests of the kernels in scstn_vcn.kernels (issue 3).

The shared harness (test_op_*.py) already runs the Triton backend on random cases against float64 eager.
This file adds what is particular to the Triton kernels:
  * the launcher contract (dtypes, contiguity of outputs whatever the strides of x, int32 argmax);
  * the chunk loops that the small random cases never reach (H W, W, H or K beyond one block);
  * first-maximum tie-breaking across chunks;
  * affine_hpool's inverse index for dx under extreme theta (everything sampled from one pixel, 90-degree
    rotation, samples exactly on pixel centres);
  * bitwise determinism of every backward, in the interpreter and on CUDA;
  * CUDA runs at the paper shapes (O) 2048x24x8 and (M) 2048x48x16 (skipped without a GPU).
On a machine without CUDA, tests/conftest.py switches on TRITON_INTERPRET before the kernels are imported.
"""

import math

import pytest
import torch

from op_harness import TOLERANCE
from scstn_vcn import ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HAS_TRITON = "triton" in ops.available_backends(DEVICE)
pytestmark = pytest.mark.skipif(not HAS_TRITON, reason=f"the triton backend is not available on {DEVICE}")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _kernels():
    from scstn_vcn.kernels import affine_hpool, channel_pool, vertical_proj

    return channel_pool, affine_hpool, vertical_proj


def _assert_close(actual, expected, dtype, what):
    error = (actual.double() - expected.double()).abs().max().item()
    scale = max(1.0, expected.double().abs().max().item())
    assert error <= TOLERANCE[dtype] * scale, f"{what}: error {error:.3g} > {TOLERANCE[dtype] * scale:.3g}"


def _forward_backward(fn, inputs, seed=0):
    """Outputs and input gradients of fn(*inputs) for fixed random upstream gradients."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    outputs = fn(*leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    gen = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype) for o in outputs]
    torch.autograd.backward(outputs, upstream)
    return [o.detach() for o in outputs], [t.grad for t in leaves]


def _compare_with_fp64_eager(op, inputs, dtype, what, grads=None):
    """Triton on `inputs` (of dtype) vs eager float64 on the same rounded values, forward and backward
    (the gradients of the inputs numbered in `grads`, default all)."""
    fn = getattr(ops, op)
    got_out, got_grad = _forward_backward(lambda *t: fn(*t, backend="triton"), inputs)
    ref_inputs = [t.detach().double() for t in inputs]
    ref_out, ref_grad = _forward_backward(lambda *t: fn(*t, backend="eager"), ref_inputs)
    for i, (a, e) in enumerate(zip(got_out, ref_out)):
        assert a.dtype == dtype
        _assert_close(a, e, dtype, f"{what} out{i}")
    for i, (a, e) in enumerate(zip(got_grad, ref_grad)):
        if grads is None or i in grads:
            _assert_close(a, e, dtype, f"{what} grad{i}")


# --- launcher contract -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_launchers_return_contiguous_outputs_of_the_contract_dtypes(dtype):
    channel_pool, affine_hpool, vertical_proj = _kernels()
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(2, 5, 6, 4, device=DEVICE).to(dtype).contiguous(memory_format=torch.channels_last)
    cmean, gpool, argmax = channel_pool.channel_pool_forward(x)
    assert (cmean.dtype, gpool.dtype, argmax.dtype) == (dtype, dtype, torch.int32)
    dx = channel_pool.channel_pool_backward(torch.randn_like(cmean), torch.randn_like(gpool), argmax, x)
    assert dx.dtype == dtype and dx.is_contiguous() and dx.shape == x.shape

    theta = torch.tensor([[[0.9, 0.1, 0.05], [-0.2, 1.1, 0.0]]] * 2, device=DEVICE, dtype=compute)
    out, am = affine_hpool.affine_hpool_forward(x, theta)
    assert out.shape == (2, 5, 6) and out.dtype == dtype and am.dtype == torch.int32
    assert bool(((am >= 0) & (am < 4)).all())
    dx, dtheta = affine_hpool.affine_hpool_backward(torch.randn_like(out), x, theta, am)
    assert dx.dtype == dtype and dx.is_contiguous() and dx.shape == x.shape
    assert dtheta.dtype == compute and dtheta.shape == (2, 2, 3)

    F = torch.randn(2, 5, 6, device=DEVICE).to(dtype)
    delta = torch.randn(5, 3, 6, device=DEVICE, dtype=compute)
    f = vertical_proj.vertical_proj_forward(F, delta)
    assert f.shape == (2, 5, 3) and f.dtype == dtype
    dF, ddelta = vertical_proj.vertical_proj_backward(torch.randn_like(f), F, delta)
    assert dF.dtype == dtype and ddelta.dtype == compute and ddelta.shape == delta.shape


def test_channel_pool_argmax_is_the_first_flat_index_of_the_max():
    channel_pool, _, _ = _kernels()
    gen = torch.Generator().manual_seed(3)
    # few distinct values: many ties per channel
    x = torch.randint(0, 3, (2, 7, 5, 6), generator=gen).double().to(DEVICE)
    _, _, argmax = channel_pool.channel_pool_forward(x)
    flat = x.flatten(2)
    first = (flat == flat.max(-1, keepdim=True).values).double().argmax(-1)  # argmax of a 0/1 mask: first 1
    assert torch.equal(argmax.long(), first)


# --- chunk loops beyond one block ------------------------------------------------------------------


def test_channel_pool_many_positions_and_ties_across_chunks():
    # H W = 360 > 256 positions per chunk: two chunks; the max value appears in both chunks, the first wins
    x = torch.randn(2, 3, 12, 30, dtype=torch.float64, device=DEVICE)
    x[:, :, 1, 2] = 5.0  # flat 32, first chunk
    x[:, :, 11, 29] = 5.0  # flat 359, second chunk
    x[1, 2] = 1.0  # a constant channel: argmax 0
    _compare_with_fp64_eager("channel_pool", [x], torch.float64, "channel_pool HW=360")
    _, _, argmax = _kernels()[0].channel_pool_forward(x)
    assert argmax[0].tolist() == [32, 32, 32] and argmax[1].tolist() == [32, 32, 0]
    _compare_with_fp64_eager("channel_pool", [x.float()], torch.float32, "channel_pool HW=360 fp32")


def test_affine_hpool_width_beyond_one_block():
    # W = 40 > 32 samples per chunk; a mild rotation so rows mix
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 5, 40, generator=gen, dtype=torch.float64).to(DEVICE)
    theta = torch.tensor([[[1.0, 0.13, 0.021], [0.05, 0.9, -0.1]], [[0.7, 0.0, 0.3], [0.0, 1.2, 0.1]]],
                         dtype=torch.float64, device=DEVICE)
    _compare_with_fp64_eager("affine_hpool", [x, theta], torch.float64, "affine_hpool W=40")
    _compare_with_fp64_eager("affine_hpool", [x.float(), theta.float()], torch.float32, "affine_hpool W=40 fp32")


def test_vertical_proj_long_height_and_many_kernels():
    # H = 70 > 64 per chunk, K = 11 > 8 per chunk
    gen = torch.Generator().manual_seed(6)
    F = torch.randn(3, 5, 70, generator=gen, dtype=torch.float64).to(DEVICE)
    delta = (torch.randn(5, 11, 70, generator=gen, dtype=torch.float64) / math.sqrt(70)).to(DEVICE)
    _compare_with_fp64_eager("vertical_proj", [F, delta], torch.float64, "vertical_proj H=70 K=11")
    _compare_with_fp64_eager("vertical_proj", [F.float(), delta.float()], torch.float32, "vertical_proj fp32")


# --- affine_hpool's inverse index under extreme theta ------------------------------------------------


def _theta(rows, batch):
    return torch.tensor([rows] * batch, dtype=torch.float64, device=DEVICE)


@pytest.mark.parametrize(
    "rows",
    [
        [[1e-3, 0.0, 0.1], [0.0, 1e-3, -0.05]],  # every sample falls between the same 4 pixels: long lists
        [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]],  # 90-degree rotation of a non-square map
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],  # identity: samples on pixel centres (tx = ty = 0)
        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],  # singular: one sample point for the whole map
        [[3.0, 0.0, 5.0], [0.0, 3.0, 5.0]],  # everything outside: zero output, zero gradients
    ],
    ids=["collapse", "rot90", "identity", "singular", "outside"],
)
def test_affine_hpool_extreme_theta(rows):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 7, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    # On pixel centres (identity) r is not differentiable in theta: each side's one-sided derivative is
    # valid and eager's pick depends on its rounding, so compare dtheta only off the kinks.
    grads = (0,) if rows[0][0] == 1.0 else None
    _compare_with_fp64_eager("affine_hpool", [x, _theta(rows, 2)], torch.float64, f"theta {rows}", grads)


def test_affine_hpool_identity_theta_is_plain_pooling():
    # with theta = identity the resampling is exact: out = mean_w x + max_w x, and dx is exact too
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 5, 4, generator=gen, dtype=torch.float64).to(DEVICE)
    theta = _theta([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 2)
    out, argmax = _kernels()[1].affine_hpool_forward(x, theta)
    torch.testing.assert_close(out, x.mean(-1) + x.max(-1).values, rtol=1e-12, atol=1e-12)
    assert torch.equal(argmax.long(), x.argmax(-1))
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(DEVICE)
    dx, _ = _kernels()[1].affine_hpool_backward(g, x, theta, argmax)
    expected = (g / 4)[..., None].expand_as(x).clone()
    expected.scatter_add_(-1, x.argmax(-1, keepdim=True), g[..., None])
    torch.testing.assert_close(dx, expected, rtol=1e-12, atol=1e-12)


# --- bitwise determinism ---------------------------------------------------------------------------


def _backward_twice(op, inputs):
    fn = getattr(ops, op)
    runs = [_forward_backward(lambda *t: fn(*t, backend="triton"), inputs, seed=11)[1] for _ in range(2)]
    for first, second in zip(*runs):
        assert torch.equal(first, second), f"{op}: two backward runs differ"


def _determinism_inputs(op, sizes, dtype, device):
    gen = torch.Generator().manual_seed(12)
    B, C, H, W = sizes
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    if op == "channel_pool":
        return [torch.randn(B, C, H, W, generator=gen).to(device, dtype)]
    if op == "affine_hpool":
        theta = torch.eye(2, 3, dtype=torch.float64).repeat(B, 1, 1) + 0.3 * torch.randn(B, 2, 3, generator=gen, dtype=torch.float64)
        return [torch.randn(B, C, H, W, generator=gen).to(device, dtype), theta.to(device, compute)]
    return [torch.randn(B, C, H, generator=gen).to(device, dtype), torch.randn(C, 6, H, generator=gen).to(device, compute)]


@pytest.mark.parametrize("op", ["channel_pool", "affine_hpool", "vertical_proj"])
def test_backward_is_bitwise_deterministic_small(op):
    _backward_twice(op, _determinism_inputs(op, (3, 37, 9, 8), torch.float32, DEVICE))


# --- CUDA at the paper shapes ------------------------------------------------------------------------

PAPER_SHAPES = {"O": (4, 2048, 24, 8), "M": (4, 2048, 48, 16)}
GPU_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@cuda_only
@pytest.mark.parametrize("shape", PAPER_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("op", ["channel_pool", "vertical_proj"])
def test_cuda_paper_shapes_match_fp64_eager(op, dtype, shape):
    inputs = _determinism_inputs(op, PAPER_SHAPES[shape], dtype, "cuda")
    if op == "vertical_proj":
        inputs[1] = inputs[1] / math.sqrt(inputs[1].shape[-1])
    _compare_with_fp64_eager(op, inputs, dtype, f"{op} {shape} {dtype}")


@cuda_only
@pytest.mark.parametrize("shape", PAPER_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("rotation", [False, True], ids=["norot", "general"])
def test_cuda_paper_shapes_affine_hpool(dtype, shape, rotation):
    """affine_hpool at the paper shapes against float64 grid_sample, pooled with the kernel's OWN argmax.

    Among ~10^5 rows of resampled values, a few pairs are closer than float32 rounding, so float32 and
    float64 may pick different maxima there (either is right). The reference therefore takes the max at
    the kernel's argmax, after checking that it is a maximum to within rounding."""
    import torch.nn.functional as F

    _, affine_hpool, _ = _kernels()
    x, theta = _determinism_inputs("affine_hpool", PAPER_SHAPES[shape], dtype, "cuda")
    if not rotation:  # SC-STN's form
        theta[:, 0, 1] = 0
        theta[:, 1, 0] = 0
    out, argmax = affine_hpool.affine_hpool_forward(x, theta)
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(out.shape, generator=gen).to("cuda", dtype)
    dx, dtheta = affine_hpool.affine_hpool_backward(g, x, theta, argmax)

    xd = x.double().requires_grad_()
    td = theta.double().requires_grad_()
    grid = F.affine_grid(td, list(x.shape), align_corners=False)
    r = F.grid_sample(xd, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    at_argmax = r.gather(-1, argmax.long().unsqueeze(-1)).squeeze(-1)
    gap = (r.max(-1).values - at_argmax).max().item()
    assert gap <= 1e-5 * max(1.0, r.abs().max().item()), f"argmax is not a maximum: gap {gap:.3g}"
    reference = r.mean(-1) + at_argmax
    reference.backward(g.double())
    _assert_close(out, reference.detach(), dtype, f"affine_hpool {shape} {dtype} out")
    _assert_close(dx, xd.grad, dtype, f"affine_hpool {shape} {dtype} grad_x")
    _assert_close(dtheta, td.grad, dtype, f"affine_hpool {shape} {dtype} grad_theta")


@cuda_only
@pytest.mark.parametrize("shape", PAPER_SHAPES, ids=str)
@pytest.mark.parametrize("op", ["channel_pool", "affine_hpool", "vertical_proj"])
def test_cuda_backward_is_bitwise_deterministic(op, shape):
    for dtype in (torch.float32, torch.bfloat16):
        _backward_twice(op, _determinism_inputs(op, PAPER_SHAPES[shape], dtype, "cuda"))


# --- the compiled path, without a GPU --------------------------------------------------------------


def test_kernels_compile_for_sm90_ahead_of_time(tmp_path):
    """Every kernel goes through Triton's full compiler (LLVM, ptxas) for sm_90 at the paper shape (O)'s
    block sizes, in a subprocess without the interpreter: on a CPU-only machine the tests above only reach
    the interpreter, which accepts some programs that the compiler rejects."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run(
        [sys.executable, "-m", "scstn_vcn.kernels._aot_check", "--dtype", "float32", "bfloat16", "--shape", "O"],
        capture_output=True, text=True, env=env, timeout=300,
        cwd=tmp_path,  # not the repository root, whose source scstn_vcn/ would shadow the installed package
    )
    assert done.returncode == 0, done.stderr[-3000:]
    compiled = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("_")]
    assert len(compiled) == 20, done.stdout
