"""Triton-specific tests of the kernels in scstn_vcn.kernels (issue 3).

The shared harness (test_op_*.py) already runs the Triton backend on random cases against float64 eager.
This file adds what is particular to the Triton kernels:
  * the launcher contract (dtypes, contiguity of outputs whatever the strides of x, int32 argmax);
  * the chunk loops that the small random cases never reach (H W, W, H or K beyond one block);
  * first-maximum tie-breaking across chunks;
  * affine_hpool's inverse index for dx under extreme theta (everything sampled from one pixel, 90-degree
    rotation, samples exactly on pixel centres);
  * bitwise determinism of every backward, in the interpreter and on CUDA;
  * every launcher runs on the device of its tensors, and every launch grid stays within CUDA's limits
    (axes 1 and 2 at most 65,535 programs) for C H up to 2^30;
  * affine_hpool's one-kernel inverse index is bitwise the stable sort it replaced;
  * vertical_proj's ddelta summed over several splits of the batch;
  * CUDA runs at the paper shapes (O) 2048x24x8 and (M) 2048x48x16, B = 4 and B = 96, float64 included
    (skipped without a GPU).
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


def _assert_matches_own_argmax_reference(x, theta, g, results, dtype, what, theta_mask=None):
    """results = (out, argmax, dx, dtheta) of an affine_hpool kernel for grad_out g, against float64
    grid_sample (on theta * theta_mask where given) pooled with the kernel's OWN argmax, after checking
    that the argmax is a maximum of its row within rounding."""
    import torch.nn.functional as F

    out, argmax, dx, dtheta = results
    xd = x.double().requires_grad_()
    td = theta.double().requires_grad_()
    grid = F.affine_grid(td if theta_mask is None else td * theta_mask, list(x.shape), align_corners=False)
    r = F.grid_sample(xd, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    at_argmax = r.gather(-1, argmax.long().unsqueeze(-1)).squeeze(-1)
    gap = (r.max(-1).values - at_argmax).max().item()
    assert gap <= 1e-5 * max(1.0, r.abs().max().item()), f"argmax is not a maximum: gap {gap:.3g}"
    reference = r.mean(-1) + at_argmax
    reference.backward(g.double())
    _assert_close(out, reference.detach(), dtype, f"{what} out")
    _assert_close(dx, xd.grad, dtype, f"{what} grad_x")
    _assert_close(dtheta, td.grad, dtype, f"{what} grad_theta")


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
    theta = torch.tensor(
        [[[1.0, 0.13, 0.021], [0.05, 0.9, -0.1]], [[0.7, 0.0, 0.3], [0.0, 1.2, 0.1]]],
        dtype=torch.float64,
        device=DEVICE,
    )
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
        theta = torch.eye(2, 3, dtype=torch.float64).repeat(B, 1, 1) + 0.3 * torch.randn(
            B, 2, 3, generator=gen, dtype=torch.float64
        )
        return [torch.randn(B, C, H, W, generator=gen).to(device, dtype), theta.to(device, compute)]
    return [
        torch.randn(B, C, H, generator=gen).to(device, dtype),
        torch.randn(C, 6, H, generator=gen).to(device, compute),
    ]


@pytest.mark.parametrize("op", ["channel_pool", "affine_hpool", "vertical_proj"])
def test_backward_is_bitwise_deterministic_small(op):
    _backward_twice(op, _determinism_inputs(op, (3, 37, 9, 8), torch.float32, DEVICE))


# --- device of the launches ------------------------------------------------------------------------


def test_device_context_selects_the_tensors_cuda_device():
    from types import SimpleNamespace

    from scstn_vcn.kernels._common import device_context

    # building the context touches no GPU, so this runs anywhere
    context = device_context(SimpleNamespace(device=torch.device("cuda", 1)))
    assert isinstance(context, torch.cuda.device) and context.idx == 1
    assert not isinstance(device_context(torch.zeros(1)), torch.cuda.device)


def test_every_launcher_launches_in_its_tensors_device_context(monkeypatch):
    """Triton launches on the current CUDA device, so each launcher must enter its tensors' device
    (cuda:1 tensors while cuda:0 is current). Record every entered context, forward and backward."""
    import contextlib

    modules = _kernels()
    entered = []

    def recording_context(tensor):
        entered.append(tensor.device)
        return contextlib.nullcontext()

    for module in modules:
        monkeypatch.setattr(module, "device_context", recording_context)
    channel_pool, affine_hpool, vertical_proj = modules
    x = torch.randn(2, 3, 4, 5, device=DEVICE)
    theta = torch.eye(2, 3, device=DEVICE).repeat(2, 1, 1)
    F = torch.randn(2, 3, 4, device=DEVICE)
    delta = torch.randn(3, 2, 4, device=DEVICE)
    cmean, gpool, argmax = channel_pool.channel_pool_forward(x)
    out, am = affine_hpool.affine_hpool_forward(x, theta)
    f = vertical_proj.vertical_proj_forward(F, delta)
    assert len(entered) == 3
    channel_pool.channel_pool_backward(torch.ones_like(cmean), torch.ones_like(gpool), argmax, x)
    assert len(entered) == 4
    affine_hpool.affine_hpool_backward(torch.ones_like(out), x, theta, am)
    assert len(entered) == 6  # the backward and, inside it, the inverse index
    vertical_proj.vertical_proj_backward(torch.ones_like(f), F, delta)
    assert entered == [x.device] * 7


def test_position_kernels_compile_without_fp_fusion_in_the_launchers_and_the_aot_check(monkeypatch):
    """The kernels that compute affine_hpool's sample positions are launched with EXACT_POSITIONS (no fma
    contraction; see "Rounding" in kernels/affine_hpool.py), the others with Triton's defaults, and the
    AOT check compiles each kernel with the options its launcher uses (it then checks their PTX)."""
    from scstn_vcn.kernels import _aot_check

    _, affine_hpool, _ = _kernels()
    exact = {"_affine_hpool_fwd_kernel", "_affine_hpool_dtheta_kernel", "_inverse_index_kernel"}
    assert affine_hpool.EXACT_POSITIONS == {"enable_fp_fusion": False}
    for dtype in (torch.float32, torch.float64):
        jobs = {job[0].__name__: job[4] for job in _aot_check._jobs(dtype, _aot_check.PAPER["M"])}
        assert {name for name, options in jobs.items() if options} == exact
        assert all(jobs[name] == affine_hpool.EXACT_POSITIONS for name in exact)
    launched = {}

    class Recording:
        def __init__(self, kernel, name):
            self.kernel, self.name = kernel, name

        def __getitem__(self, grid):
            launch = self.kernel[grid]

            def run(*args, **kwargs):
                launched[self.name] = {k: v for k, v in kwargs.items() if k == "enable_fp_fusion"}
                return launch(*args, **kwargs)

            return run

    for name in [n for n in vars(affine_hpool) if n.startswith("_") and n.endswith("_kernel")]:
        monkeypatch.setattr(affine_hpool, name, Recording(getattr(affine_hpool, name), name))
    x = torch.randn(2, 3, 4, 5, device=DEVICE)
    theta = _theta([[0.9, 0.2, 0.1], [-0.1, 1.1, 0.0]], 2).float()
    out, argmax = affine_hpool.affine_hpool_forward(x, theta)
    affine_hpool.affine_hpool_backward(torch.ones_like(out), x, theta, argmax)
    assert len(launched) == 5  # forward, dtheta, dtheta reduction, inverse index, dx
    assert {name for name, options in launched.items() if options} == exact, launched
    assert all(launched[name] == affine_hpool.EXACT_POSITIONS for name in exact)


def test_interpreter_compat_squeezes_scalar_arguments_on_triton_before_3_7(monkeypatch):
    """triton 3.6's interpreter converts a kernel's scalar argument (a one-element array) with int(array),
    which numpy 2.4 refuses; kernels/_interpreter_compat.py makes it squeeze first, on triton < 3.7 only."""
    from types import SimpleNamespace

    import numpy as np
    import triton
    from triton.runtime import interpreter

    from scstn_vcn.kernels import _interpreter_compat as compat

    wrapped = []

    def triton_36_patch(tensor, scope):  # what triton 3.6 sets
        wrapped.append(tensor)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))

    class Scope:
        def set_attr(self, obj, name, value):
            setattr(obj, name, value)

    class Tensor:
        pass

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", triton_36_patch)
    monkeypatch.setattr(compat, "INTERPRET", True)
    for version, parsed in (("3.7.0", (3, 7)), ("3.9.0+git8f2a1b", (3, 9)), ("3.10.1", (3, 10))):
        monkeypatch.setattr(triton, "__version__", version)
        assert compat._triton_version() == parsed and not compat.needed() and not compat.apply()
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    assert compat.needed() and compat.apply()
    assert not compat.apply()  # wrapped once
    interpreter._patch_lang_tensor(Tensor, Scope())
    bound = Tensor()
    bound.handle = SimpleNamespace(data=np.array([7], dtype=np.int32))
    assert wrapped == [Tensor] and list(range(0, bound, 3)) == [0, 3, 6]
    monkeypatch.setattr(compat, "INTERPRET", False)  # compiled kernels: nothing to do
    assert not compat.needed()


# --- launch grids within CUDA's limits -----------------------------------------------------------

GRID_X_LIMIT, GRID_YZ_LIMIT = 2**31 - 1, 65535


def _all_grids(B, C, H, W, K=6):
    channel_pool, affine_hpool, vertical_proj = _kernels()
    grids = {
        "channel_pool forward": channel_pool.forward_grids(B, C, H, W, torch.float32)
        + channel_pool.forward_grids(B, C, H, W, torch.float64),
        "channel_pool backward": (channel_pool.backward_grid(B, C, H, W),),
        "affine_hpool forward": (affine_hpool.forward_grid(B, C, H, W),),
        "affine_hpool backward": affine_hpool.backward_grids(B, C, H, W),
        "vertical_proj forward": (vertical_proj.forward_grid(B, C, K, H),),
        "vertical_proj backward": tuple(g for g in vertical_proj.backward_grids(B, C, K, H) if g is not None),
    }
    return grids


@pytest.mark.parametrize(
    "C,H,W",
    [(2048, 24, 8), (2**26, 16, 8), (2**22, 256, 1), (64, 2**24, 4), (2**10, 2**20, 2)],
    ids=["paper", "many-channels", "tall", "very-tall", "rows-2^30"],
)
def test_launch_grids_stay_within_cuda_limits(C, H, W):
    # C H up to 2^30: the row blocks grow past 65,535 and must sit on axis 0
    for what, grids in _all_grids(96, C, H, W).items():
        for grid in grids:
            assert 1 <= len(grid) <= 3 and all(size >= 1 for size in grid), f"{what}: {grid}"
            assert grid[0] <= GRID_X_LIMIT, f"{what}: axis 0 of {grid}"
            assert all(size <= GRID_YZ_LIMIT for size in grid[1:]), f"{what}: axis 1/2 of {grid}"
    if C * H > 2**22:  # the case the old (B, row blocks) grids failed: more than 65,535 row blocks
        assert _kernels()[1].forward_grid(96, C, H, W)[0] > GRID_YZ_LIMIT


def test_launch_grid_beyond_the_batch_limit_is_a_clear_error():
    with pytest.raises(ValueError, match="grid axis 1.*batch"):
        _kernels()[1].forward_grid(70000, 8, 4, 4)


def test_row_indices_beyond_int32_are_a_clear_error():
    channel_pool, affine_hpool, _ = _kernels()
    huge = torch.empty((1, 2**21, 2**10, 1), device="meta")  # C H = 2^31 rows, nothing allocated
    theta = torch.empty((1, 2, 3), device="meta")
    with pytest.raises(ValueError, match=r"C \* H .*int32"):
        affine_hpool.affine_hpool_forward(huge, theta)
    with pytest.raises(ValueError, match=r"H \* W .*int32"):
        channel_pool.channel_pool_forward(torch.empty((1, 1, 2**16, 2**15), device="meta"))


# --- affine_hpool's inverse index: one kernel, bitwise the stable sort it replaced ----------------


def _stable_sort_inverse_index(theta, H, W):
    """The inverse index as the Triton backward built it before (about 70 torch launches): every
    (sample, neighbour) pair keyed by its input pixel (H W outside the map), stably sorted. Computed on
    the CPU and returned on theta's device: there every operation rounds to nearest, as in the kernel
    (compiled without fma contraction, dividing with div_rn; see "Rounding" in kernels/affine_hpool.py),
    whereas torch on CUDA divides a tensor by a Python number as a product with its reciprocal."""
    device = theta.device
    theta = theta.cpu()
    B = theta.shape[0]
    dev, dt = theta.device, theta.dtype
    u = (2 * torch.arange(W, device=dev, dtype=dt) + 1) / W - 1
    v = (2 * torch.arange(H, device=dev, dtype=dt) + 1) / H - 1
    t = theta.reshape(B, 6, 1, 1)
    gx = t[:, 0] * u + t[:, 1] * v[:, None] + t[:, 2]
    gy = t[:, 3] * u + t[:, 4] * v[:, None] + t[:, 5]
    ix = (((gx + 1) * W - 1) * 0.5).clamp(-2.0, W + 1.0)
    iy = (((gy + 1) * H - 1) * 0.5).clamp(-2.0, H + 1.0)
    x0f, y0f = ix.floor(), iy.floor()
    tx, ty = ix - x0f, iy - y0f
    x0, y0 = x0f.long(), y0f.long()
    xs = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=-1)
    ys = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=-1)
    weight = torch.stack([(1 - tx) * (1 - ty), tx * (1 - ty), (1 - tx) * ty, tx * ty], dim=-1)
    inside = (xs >= 0) & (xs < W) & (ys >= 0) & (ys < H)
    HW = H * W
    key = torch.where(inside, ys * W + xs, HW).reshape(B, 4 * HW)
    sorted_key, order = torch.sort(key, dim=1, stable=True)
    sample = (torch.arange(4 * HW, device=dev) // 4)[order].to(torch.int32)
    weight = torch.gather(weight.reshape(B, 4 * HW), 1, order)
    bounds = torch.arange(HW + 1, device=dev).expand(B, HW + 1).contiguous()
    start = torch.searchsorted(sorted_key.contiguous(), bounds, side="left")
    return start.to(device), sample.to(device), weight.to(device)


def _index_thetas(B, gen, dtype):
    theta = torch.eye(2, 3, dtype=torch.float64).repeat(B, 1, 1)
    theta += 0.4 * torch.randn(B, 2, 3, generator=gen, dtype=torch.float64)
    theta[0] = torch.tensor([[1e-3, 0.0, 0.1], [0.0, 1e-3, -0.05]])  # collapse: lists longer than a chunk
    theta[1] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # on pixel centres
    theta[2] = torch.tensor([[3.0, 0.0, 5.0], [0.0, 3.0, 5.0]])  # all outside
    theta[3] = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])  # 90-degree rotation
    theta[4] = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]])  # zoom in: samples between pixels
    return theta.to(DEVICE, dtype).contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("H,W", [(7, 6), (12, 11), (3, 1), (24, 8), (48, 16)])  # 12 .. 3072 pairs: 1 .. 24 chunks
def test_inverse_index_kernel_equals_the_stable_sort(H, W, dtype):
    _, affine_hpool, _ = _kernels()
    theta = _index_thetas(7, torch.Generator().manual_seed(31), dtype)
    start, sample, weight = affine_hpool.inverse_index(theta, H, W)
    ref_start, ref_sample, ref_weight = _stable_sort_inverse_index(theta, H, W)
    assert start.dtype == sample.dtype == torch.int32 and weight.dtype == dtype
    assert torch.equal(start.long(), ref_start)
    assert torch.equal(sample, ref_sample)
    assert torch.equal(weight, ref_weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_affine_hpool_backward_bitwise_equal_with_the_stable_sort_index(monkeypatch, dtype):
    _, affine_hpool, _ = _kernels()
    gen = torch.Generator().manual_seed(32)
    x = torch.randn(7, 5, 9, 6, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
    theta = _index_thetas(7, gen, dtype)
    out, argmax = affine_hpool.affine_hpool_forward(x, theta)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
    dx, dtheta = affine_hpool.affine_hpool_backward(g, x, theta, argmax)
    monkeypatch.setattr(
        affine_hpool,
        "inverse_index",
        lambda t, H, W: tuple(a.contiguous() for a in _stable_sort_inverse_index(t, H, W)),
    )
    ref_dx, ref_dtheta = affine_hpool.affine_hpool_backward(g, x, theta, argmax)
    assert torch.equal(dx, ref_dx) and torch.equal(dtheta, ref_dtheta)


# --- vertical_proj's ddelta over several splits of the batch --------------------------------------


def test_vertical_proj_ddelta_split_over_the_batch():
    _, _, vertical_proj = _kernels()
    B, C, K, H = 50, 5, 3, 6
    n_splits, per_split = vertical_proj.ddelta_splits(B, C, K, H)
    assert n_splits == 3 and per_split == 17  # the last split is shorter
    assert vertical_proj.ddelta_splits(96, 2048, 6, 24)[0] > 1  # the paper shape is split too
    gen = torch.Generator().manual_seed(33)
    F = torch.randn(B, C, H, generator=gen, dtype=torch.float64).to(DEVICE)
    delta = (torch.randn(C, K, H, generator=gen, dtype=torch.float64) / math.sqrt(H)).to(DEVICE)
    _compare_with_fp64_eager("vertical_proj", [F, delta], torch.float64, "vertical_proj 3 splits")
    _compare_with_fp64_eager("vertical_proj", [F.float(), delta.float()], torch.float32, "vertical_proj 3 splits fp32")
    _backward_twice("vertical_proj", [F.float(), delta.float()])


# --- CUDA at the paper shapes ------------------------------------------------------------------------

PAPER_SHAPES = {"O": (4, 2048, 24, 8), "M": (4, 2048, 48, 16)}
# the paper's batch (P x K = 16 x 6): grids, splits and index sizes as in training
PAPER_BATCH_SHAPES = {"O96": (96, 2048, 24, 8), "M96": (96, 2048, 48, 16)}
GPU_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@cuda_only
@pytest.mark.parametrize(
    "shape,dtype",
    [(shape, dtype) for shape in PAPER_SHAPES for dtype in GPU_DTYPES]
    + [(shape, torch.float32) for shape in PAPER_BATCH_SHAPES],
    ids=str,
)
@pytest.mark.parametrize("op", ["channel_pool", "vertical_proj"])
def test_cuda_paper_shapes_match_fp64_eager(op, dtype, shape):
    inputs = _determinism_inputs(op, {**PAPER_SHAPES, **PAPER_BATCH_SHAPES}[shape], dtype, "cuda")
    if op == "vertical_proj":
        inputs[1] = inputs[1] / math.sqrt(inputs[1].shape[-1])
    _compare_with_fp64_eager(op, inputs, dtype, f"{op} {shape} {dtype}")


@cuda_only
@pytest.mark.parametrize(
    "shape,dtype",
    [(shape, dtype) for shape in PAPER_SHAPES for dtype in GPU_DTYPES]
    + [(shape, torch.float32) for shape in PAPER_BATCH_SHAPES],
    ids=str,
)
@pytest.mark.parametrize("rotation", [False, True], ids=["norot", "general"])
def test_cuda_paper_shapes_affine_hpool(dtype, shape, rotation):
    """affine_hpool at the paper shapes against float64 grid_sample, pooled with the kernel's OWN argmax.

    Among ~10^5 rows of resampled values, a few pairs are closer than float32 rounding, so float32 and
    float64 may pick different maxima there (either is right). The reference therefore takes the max at
    the kernel's argmax, after checking that it is a maximum to within rounding."""
    _, affine_hpool, _ = _kernels()
    x, theta = _determinism_inputs("affine_hpool", {**PAPER_SHAPES, **PAPER_BATCH_SHAPES}[shape], dtype, "cuda")
    if not rotation:  # SC-STN's form
        theta[:, 0, 1] = 0
        theta[:, 1, 0] = 0
    out, argmax = affine_hpool.affine_hpool_forward(x, theta)
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(out.shape, generator=gen).to("cuda", dtype)
    dx, dtheta = affine_hpool.affine_hpool_backward(g, x, theta, argmax)
    _assert_matches_own_argmax_reference(x, theta, g, (out, argmax, dx, dtheta), dtype, f"affine_hpool {shape} {dtype}")


@cuda_only
@pytest.mark.parametrize("shape", [*PAPER_SHAPES, *PAPER_BATCH_SHAPES], ids=str)
@pytest.mark.parametrize("op", ["channel_pool", "affine_hpool", "vertical_proj"])
def test_cuda_backward_is_bitwise_deterministic(op, shape):
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        _backward_twice(op, _determinism_inputs(op, {**PAPER_SHAPES, **PAPER_BATCH_SHAPES}[shape], dtype, "cuda"))


@cuda_only
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("op", ["channel_pool", "affine_hpool", "vertical_proj"])
def test_cuda_tensors_on_the_second_gpu(op):
    """cuda:1 tensors while cuda:0 is the current device: the launches must follow the tensors."""
    assert torch.cuda.current_device() == 0
    inputs = _determinism_inputs(op, (3, 37, 9, 8), torch.float64, "cuda:1")
    _compare_with_fp64_eager(op, inputs, torch.float64, f"{op} on cuda:1")


# --- the compiled path, without a GPU --------------------------------------------------------------


def test_kernels_compile_for_sm90_ahead_of_time(tmp_path):
    """Every kernel goes through Triton's full compiler (LLVM, ptxas) for sm_90 at the paper shape (O)'s
    block sizes, in every dtype and without register spills, in a subprocess without the interpreter: on a
    CPU-only machine the tests above only reach the interpreter, which accepts some programs that the compiler
    rejects."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    env = dict(os.environ, TRITON_INTERPRET="0")
    dtypes = ["float32", "bfloat16", "float16", "float64"]
    done = subprocess.run(
        [sys.executable, "-m", "scstn_vcn.kernels._aot_check", "--dtype", *dtypes, "--shape", "O"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,  # not the repository root, whose source scstn_vcn/ would shadow the installed package
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]  # fails on errors and on spills
    compiled = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("_")]
    kernels = {
        "_channel_pool_fwd_kernel",
        "_channel_mean_reduce_kernel",
        "_channel_pool_bwd_kernel",
        "_affine_hpool_fwd_kernel",
        "_affine_hpool_dtheta_kernel",
        "_dtheta_reduce_kernel",
        "_inverse_index_kernel",
        "_affine_hpool_dx_kernel",
        "_vertical_proj_fwd_kernel",
        "_vertical_proj_dF_kernel",
        "_vertical_proj_ddelta_kernel",
        "_ddelta_reduce_kernel",
        "_separable_fwd_kernel",
        "_separable_dtheta_kernel",
        "_separable_dtheta_reduce_kernel",
        "_separable_dx_kernel",
    }
    assert kernels <= set(compiled), done.stdout  # (other ops' kernels may be listed too)
    assert all(compiled.count(name) == len(dtypes) for name in set(compiled)), done.stdout


# --- affine_hpool_separable: the rotation-free op ------------------------------------------------------


def _separable():
    from scstn_vcn.kernels import affine_hpool_separable

    return affine_hpool_separable


def _separable_theta(batch, seed, off_diagonal=0.0):
    """SC-STN-like theta (scale 1 +- 0.4, shift +- 0.4) for the first image, a zoom-out shifted far enough
    that many samples fall outside the map for the second, a flip (negative scales) for the third; random
    values so that no sample lands exactly on a pixel (where dtheta is one-sided). The off-diagonal
    entries, which the op ignores, get +- off_diagonal."""
    gen = torch.Generator().manual_seed(seed)
    u = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64) * 2 - 1  # noqa: E731
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = 1 + 0.4 * u(batch)
    theta[:, 1, 1] = 1 + 0.4 * u(batch)
    theta[:, :, 2] = 0.4 * u(batch, 2)
    if batch > 1:
        theta[1, 0, 0], theta[1, 1, 1] = 1.7 + 0.1 * u(1).item(), 1.9 + 0.1 * u(1).item()
        theta[1, :, 2] = torch.tensor([0.85, -0.9], dtype=torch.float64) + 0.05 * u(2)
    if batch > 2:
        theta[2, 0, 0], theta[2, 1, 1] = -theta[2, 0, 0], -theta[2, 1, 1]
    theta[:, 0, 1] = off_diagonal * u(batch)
    theta[:, 1, 0] = off_diagonal * u(batch)
    return theta


def _separable_x(sizes, dtype, layout, seed=21):
    gen = torch.Generator().manual_seed(seed)
    B, C, H, W = sizes
    if layout == "strided":  # every other column of a wider map, channels in reverse order: no unit stride
        x = torch.randn(B, C, H, 2 * W, generator=gen, dtype=torch.float64)[..., ::2].flip(1)
    else:
        x = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    x = x.to(DEVICE, dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize(
    "sizes,dtype,layout",
    [
        ((3, 5, 7, 6), torch.float64, "contiguous"),
        ((3, 5, 7, 6), torch.float32, "channels_last"),
        ((3, 4, 9, 5), torch.float64, "strided"),
        ((3, 5, 7, 6), torch.float16, "contiguous"),
        ((3, 70, 3, 5), torch.float64, "channels_last"),  # odd sizes, row blocks spanning many channels
    ],
    ids=["fp64", "fp32-channels_last", "fp64-strided", "fp16", "fp64-odd"],
)
def test_separable_matches_fp64_eager(sizes, dtype, layout):
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    x = _separable_x(sizes, dtype, layout)
    theta = _separable_theta(sizes[0], seed=22, off_diagonal=0.3).to(DEVICE, compute)
    _compare_with_fp64_eager("affine_hpool_separable", [x, theta], dtype, f"separable {sizes} {layout} {dtype}")


@pytest.mark.parametrize("sizes", [(2, 2, 5, 70), (2, 2, 300, 3)], ids=["W70", "H300"])
def test_separable_long_rows_and_columns(sizes):
    # W = 70: two column chunks in the dtheta and dx kernels, three in their column sums, three w-chunks in
    # the forward; H = 300: two chunks of the dx kernel's row-tap scan
    x = _separable_x(sizes, torch.float64, "contiguous")
    theta = _separable_theta(sizes[0], seed=23).to(DEVICE)
    _compare_with_fp64_eager("affine_hpool_separable", [x, theta], torch.float64, f"separable {sizes}")


@pytest.mark.parametrize(
    "rows",
    [
        [[1e-3, 0.0, 0.1], [0.0, 2e-3, -0.05]],  # every sample between the same 2 x 2 pixels: long h ranges
        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],  # singular: one sample point for the whole map
        [[3.0, 0.0, 5.0], [0.0, 3.0, 5.0]],  # everything outside: zero output, zero gradients
        [[-0.93, 0.0, 0.11], [0.0, -1.07, -0.13]],  # flipped on both axes
    ],
    ids=["collapse", "singular", "outside", "flip"],
)
def test_separable_extreme_theta(rows):
    x = _separable_x((2, 4, 8, 6), torch.float64, "contiguous", seed=24)
    theta = torch.tensor([rows] * 2, dtype=torch.float64, device=DEVICE)
    _compare_with_fp64_eager("affine_hpool_separable", [x, theta], torch.float64, f"separable theta {rows}")


def test_separable_ignores_the_off_diagonal_entries():
    """theta[:, 0, 1] and theta[:, 1, 0] are not read: the results equal those of the zeroed theta
    bitwise, and their gradient is exactly 0."""
    kernels = _separable()
    x = _separable_x((3, 4, 7, 6), torch.float64, "contiguous", seed=25)
    theta = _separable_theta(3, seed=26, off_diagonal=0.5).to(DEVICE)
    zeroed = theta.clone()
    zeroed[:, 0, 1] = 0
    zeroed[:, 1, 0] = 0
    out, argmax = kernels.affine_hpool_separable_forward(x, theta)
    out0, argmax0 = kernels.affine_hpool_separable_forward(x, zeroed)
    assert torch.equal(out, out0) and torch.equal(argmax, argmax0)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(27), dtype=torch.float64).to(DEVICE)
    dx, dtheta = kernels.affine_hpool_separable_backward(g, x, theta, argmax)
    dx0, dtheta0 = kernels.affine_hpool_separable_backward(g, x, zeroed, argmax0)
    assert torch.equal(dx, dx0) and torch.equal(dtheta, dtheta0)
    assert dtheta.is_contiguous() and dtheta.shape == (3, 2, 3) and dx.is_contiguous() and dx.shape == x.shape
    assert bool((dtheta[:, 0, 1] == 0).all()) and bool((dtheta[:, 1, 0] == 0).all())
    assert bool((dtheta[:, 0, 0] != 0).all()) and bool((dtheta[:, 1, 1] != 0).all())


def test_separable_identity_theta_is_plain_pooling():
    # the identity samples on pixel centres: out = mean_w x + max_w x exactly, dx exactly the pooling's
    kernels = _separable()
    x = _separable_x((2, 3, 5, 4), torch.float64, "contiguous", seed=28)
    theta = _theta([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 2)
    out, argmax = kernels.affine_hpool_separable_forward(x, theta)
    torch.testing.assert_close(out, x.mean(-1) + x.max(-1).values, rtol=1e-12, atol=1e-12)
    assert torch.equal(argmax.long(), x.argmax(-1))
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(29), dtype=torch.float64).to(DEVICE)
    dx, _ = kernels.affine_hpool_separable_backward(g, x, theta, argmax)
    expected = (g / 4)[..., None].expand_as(x).clone()
    expected.scatter_add_(-1, x.argmax(-1, keepdim=True), g[..., None])
    torch.testing.assert_close(dx, expected, rtol=1e-12, atol=1e-12)


def test_separable_backward_is_bitwise_deterministic_small():
    x = _separable_x((3, 37, 9, 8), torch.float32, "contiguous", seed=30)
    _backward_twice("affine_hpool_separable", [x, _separable_theta(3, seed=31).to(DEVICE, torch.float32)])


def test_separable_launch_grids_stay_within_cuda_limits():
    # row blocks on grid axis 0, the batch on axis 1 (at most 65,535), for C H up to 2^30 rows
    kernels = _separable()
    for B, C, H, W in [(65535, 2048, 48, 16), (1, 2**24, 64, 8), (2, 2**20, 1024, 4)]:
        for grid in [kernels.forward_grid(B, C, H, W), *kernels.backward_grids(B, C, H, W)]:
            assert all(size <= 65535 for size in grid[1:]), grid
    with pytest.raises(ValueError, match="axis 1"):
        kernels.forward_grid(65536, 4, 4, 4)


def test_separable_launchers_launch_in_their_tensors_device_context(monkeypatch):
    import contextlib

    kernels = _separable()
    entered = []

    def recording_context(tensor):
        entered.append(tensor.device)
        return contextlib.nullcontext()

    monkeypatch.setattr(kernels, "device_context", recording_context)
    x = torch.randn(2, 3, 4, 5, device=DEVICE)
    theta = torch.eye(2, 3, device=DEVICE).repeat(2, 1, 1)
    out, argmax = kernels.affine_hpool_separable_forward(x, theta)
    kernels.affine_hpool_separable_backward(torch.ones_like(out), x, theta, argmax)
    assert entered == [x.device] * 2


@cuda_only
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_separable_tensors_on_the_second_gpu():
    assert torch.cuda.current_device() == 0
    x = _separable_x((3, 37, 9, 8), torch.float64, "contiguous", seed=35).to("cuda:1")
    theta = _separable_theta(3, seed=36).to("cuda:1")
    _compare_with_fp64_eager("affine_hpool_separable", [x, theta], torch.float64, "separable on cuda:1")


@cuda_only
@pytest.mark.parametrize("shape", list(PAPER_BATCH_SHAPES), ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_cuda_paper_batch_affine_hpool_separable(dtype, shape):
    """The separable op at the paper's batch against float64 grid_sample on the masked theta, pooled with
    the kernel's OWN argmax (near-ties may order differently in float32; the choice must be a maximum
    within rounding); the backward bitwise deterministic."""
    kernels = _separable()
    sizes = PAPER_BATCH_SHAPES[shape]
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    x = _separable_x(sizes, dtype, "contiguous", seed=32)
    theta = _separable_theta(sizes[0], seed=33, off_diagonal=0.2).to("cuda", compute)
    out, argmax = kernels.affine_hpool_separable_forward(x, theta)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(34)).to("cuda", dtype)
    dx, dtheta = kernels.affine_hpool_separable_backward(g, x, theta, argmax)
    dx2, dtheta2 = kernels.affine_hpool_separable_backward(g, x, theta, argmax)
    assert torch.equal(dx, dx2) and torch.equal(dtheta, dtheta2), "backward is not bitwise deterministic"
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64, device="cuda")
    _assert_matches_own_argmax_reference(
        x, theta, g, (out, argmax, dx, dtheta), dtype, f"separable {shape} {dtype}", theta_mask=mask
    )
