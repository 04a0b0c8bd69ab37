"""The native CUDA kernels of scstn_vcn._C against fp64 eager references, at the paper's shapes.

Needs a CUDA device and an extension built with CUDA; skipped otherwise. For each op and each of
float32 / bfloat16 / float16 / float64: forward outputs, argmax indices (the FIRST maximum), and every
gradient are compared with the eager reference evaluated in float64 on the upcast inputs, on the
CPU (whose max returns the first maximum). Also: theta with and without rotation and with samples
outside the map, channels_last x, bitwise-deterministic backward, the paper's batch (B = 96), shared
memory that holds only initialised values (compute-sanitizer initcheck), and input errors.

Gradients through a max are compared with the max position the kernel chose: in affine_hpool the
resampled values are computed in float32 by the kernel and in float64 by the reference, so two
nearly equal values can be ordered differently by rounding alone. The choice itself is checked
separately: it must be a maximum of the float64 row up to rounding, and the first maximum whenever
the row's largest value is clear of the rest.
"""

import pytest
import torch
import torch.nn.functional as F

import scstn_vcn.ops as ops


def _native_cuda_reason():
    if not torch.cuda.is_available():
        return "no CUDA device"
    ok, why = ops.backend_status("native", "cuda")
    return None if ok else why


_REASON = _native_cuda_reason()
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(_REASON is not None, reason=f"native CUDA ops unavailable: {_REASON}"),
]

NATIVE = torch.ops.scstn_vcn if _REASON is None else None
SHAPES = {"O": (4, 2048, 24, 8), "M": (4, 2048, 48, 16)}
# Small odd sizes (a partial 64-channel block, odd W) and a map too large for shared memory.
EXTRA_SHAPES = {"odd": (3, 70, 5, 7), "large": (2, 3, 130, 132)}
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# The paper's batch (P x K = 16 x 6) at both shapes: grids, splits and shared-memory plans as in training.
PAPER_BATCH = {"O96": (96, 2048, 24, 8), "M96": (96, 2048, 48, 16)}
# Relative tolerance for results rounded to the dtype (computed in float32 inside the kernels).
TOL = {torch.float32: 2e-4, torch.bfloat16: 2e-2, torch.float16: 3e-3, torch.float64: 1e-10}


def assert_near(actual, expected, tol, what):
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max(expected.abs().max().item(), 1.0)
    err = (actual - expected).abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:.1g} x {scale:.3g}"


def make_x(shape, dtype, seed, channels_last=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(dtype).cuda()
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x


def make_theta(kind, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    u = lambda *s: torch.rand(*s, generator=gen) * 2 - 1  # noqa: E731
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
    if kind == "identity":
        theta[:, 0, 0] = theta[:, 1, 1] = 1
    elif kind == "sc":  # SC-STN: scale and shift only, eps = 0.4
        theta[:, 0, 0] = 1 + 0.4 * u(batch)
        theta[:, 1, 1] = 1 + 0.4 * u(batch)
        theta[:, 0, 2] = 0.4 * u(batch)
        theta[:, 1, 2] = 0.4 * u(batch)
    elif kind == "rotated":
        angle = 0.6 * u(batch)
        scale = 1 + 0.3 * u(batch)
        theta[:, 0, 0] = scale * torch.cos(angle)
        theta[:, 0, 1] = -scale * torch.sin(angle)
        theta[:, 1, 0] = scale * torch.sin(angle)
        theta[:, 1, 1] = scale * torch.cos(angle)
        theta[:, :, 2] = 0.3 * u(batch, 2)
    elif kind == "outside":  # zoomed out and shifted: many samples fall outside the map
        theta[:, 0, 0] = 1.6 + 0.2 * u(batch)
        theta[:, 1, 1] = 1.8 + 0.2 * u(batch)
        theta[:, 0, 1] = 0.2 * u(batch)
        theta[:, :, 2] = 0.9 * torch.sign(u(batch, 2))
    else:
        raise ValueError(kind)
    return theta


def compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def first_argmax(values):
    """Index of the first maximum along the last dim (torch.argmax documents the first)."""
    return torch.argmax(values, dim=-1)


# ------------------------------------------------------------------------------------------------
# channel_pool


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape", list(SHAPES.values()) + list(EXTRA_SHAPES.values()), ids=list(SHAPES) + list(EXTRA_SHAPES)
)
def test_channel_pool(shape, dtype):
    x = make_x(shape, dtype, seed=1)
    B, C, H, W = shape
    cmean, gpool, argmax = NATIVE.channel_pool(x)
    assert cmean.dtype == gpool.dtype == dtype and argmax.dtype == torch.int32
    assert cmean.is_contiguous() and gpool.is_contiguous()
    x64 = x.double().cpu()
    ref_cmean, ref_gpool = ops.channel_pool_eager(x64)
    assert_near(cmean, ref_cmean, TOL[dtype], "cmean")
    assert_near(gpool, ref_gpool, TOL[dtype], "gpool")
    # The max is over stored values, so the first maximum is exact in any dtype.
    assert torch.equal(argmax.long().cpu(), first_argmax(x64.flatten(2)))

    gen = torch.Generator().manual_seed(2)
    g_m = torch.randn(B, H, W, generator=gen).to(dtype).cuda()
    g_p = torch.randn(B, C, generator=gen).to(dtype).cuda()
    dx = NATIVE.channel_pool_backward(g_m, g_p, argmax, x)
    assert dx.shape == x.shape and dx.dtype == dtype and dx.is_contiguous()
    x_ref = x64.clone().requires_grad_()
    out = ops.channel_pool_eager(x_ref)
    torch.autograd.backward(out, (g_m.double().cpu(), g_p.double().cpu()))
    assert_near(dx, x_ref.grad, TOL[dtype], "dx")
    dx_again = NATIVE.channel_pool_backward(g_m, g_p, argmax, x)
    assert torch.equal(dx, dx_again), "channel_pool_backward is not bitwise deterministic"
    cmean2, gpool2, _ = NATIVE.channel_pool(x)
    assert torch.equal(cmean, cmean2) and torch.equal(gpool, gpool2), "channel_pool forward is not deterministic"


@pytest.mark.parametrize("shape", list(PAPER_BATCH.values()), ids=list(PAPER_BATCH))
def test_channel_pool_paper_batch(shape):
    test_channel_pool(shape, torch.float32)


def test_channel_pool_channels_last_and_ties():
    x = make_x(SHAPES["O"], torch.float32, seed=3)
    cl = x.to(memory_format=torch.channels_last)
    for a, b in zip(NATIVE.channel_pool(x), NATIVE.channel_pool(cl)):
        assert torch.equal(a, b)
    # Exact ties: small integers, many repeated maxima per row; the first one must win.
    ties = torch.randint(0, 3, (2, 70, 6, 5), generator=torch.Generator().manual_seed(4)).float().cuda()
    _, _, argmax = NATIVE.channel_pool(ties)
    assert torch.equal(argmax.long().cpu(), first_argmax(ties.cpu().flatten(2)))


def test_channel_pool_autograd_matches_direct_op():
    x = make_x((2, 130, 6, 4), torch.float32, seed=5).requires_grad_()
    cmean, gpool = ops.channel_pool(x, backend="native")
    g_m, g_p = torch.randn_like(cmean), torch.randn_like(gpool)
    (dx,) = torch.autograd.grad((cmean, gpool), x, (g_m, g_p))
    _, _, argmax = NATIVE.channel_pool(x.detach())
    assert torch.equal(dx, NATIVE.channel_pool_backward(g_m, g_p, argmax, x.detach()))


# ------------------------------------------------------------------------------------------------
# affine_hpool


def resampled_ref(x64, theta64):
    grid = F.affine_grid(theta64, list(x64.shape), align_corners=False)
    return F.grid_sample(x64, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def assert_first_max(argmax, r64, ref_device):
    """argmax (the kernel's, int32) is a maximum of its float64 row of r64 up to rounding, and the first
    one where the maximum is clear. Returns it as int64 on ref_device."""
    W = r64.shape[-1]
    a = argmax.long().to(ref_device)
    assert bool(((a >= 0) & (a < W)).all())
    top2 = r64.topk(min(2, W), dim=-1).values
    chosen = r64.gather(-1, a.unsqueeze(-1)).squeeze(-1)
    slack = 1e-5 * max(r64.abs().max().item(), 1.0)
    assert bool((chosen >= top2[..., 0] - slack).all()), "argmax is not a maximum of its row"
    clear = (top2[..., 0] - top2[..., -1]) > slack
    assert torch.equal(a[clear], first_argmax(r64)[clear]), "argmax differs where the maximum is clear"
    return a


def reference_grads(x64, t64, a, g, ref_device):
    """float64 (dx, dtheta) through grid_sample for dL/dout = g: dL/dr = g / W + g at the argmax a."""
    B, C, H, W = x64.shape
    x_ref = x64.clone().requires_grad_()
    t_ref = t64.clone().requires_grad_()
    g64 = g.double().to(ref_device)
    dr = (g64 / W).unsqueeze(-1).expand(B, C, H, W).clone()
    dr.scatter_add_(-1, a.unsqueeze(-1), g64.unsqueeze(-1))
    return torch.autograd.grad(resampled_ref(x_ref, t_ref), (x_ref, t_ref), dr)


def check_affine(x, theta, dtype, tol, check_theta_grad=True, ref_device="cpu"):
    """ref_device: where the float64 references run (the GPU for the largest cases: torch.argmax
    returns the first maximum there too)."""
    B, C, H, W = x.shape
    theta_c = theta.to(compute_dtype(dtype)).cuda()
    out, argmax = NATIVE.affine_hpool(x, theta_c)
    assert out.shape == (B, C, H) and out.dtype == dtype and argmax.dtype == torch.int32
    x64 = x.double().to(ref_device).contiguous()
    t64 = theta_c.double().to(ref_device)
    assert_near(out, ops.affine_hpool_eager(x64, t64), tol, "out")

    # argmax: a maximum of the float64 row up to rounding, and the first one where it is clear.
    a = assert_first_max(argmax, resampled_ref(x64, t64), ref_device)

    gen = torch.Generator().manual_seed(7)
    g = torch.randn(B, C, H, generator=gen).to(dtype).cuda()
    dx, dtheta = NATIVE.affine_hpool_backward(g, x, theta_c, argmax)
    assert dx.shape == x.shape and dx.dtype == dtype and dx.is_contiguous()
    assert dtheta.shape == (B, 2, 3) and dtheta.dtype == theta_c.dtype and dtheta.is_contiguous()
    # Reference gradient: dL/dr = g / W + g at the kernel's argmax, through grid_sample in float64.
    ref_dx, ref_dtheta = reference_grads(x64, t64, a, g, ref_device)
    assert_near(dx, ref_dx, tol, "dx")
    if check_theta_grad:
        assert_near(dtheta, ref_dtheta, 1e-3 if dtype != torch.float64 else 1e-9, "dtheta")
    dx2, dtheta2 = NATIVE.affine_hpool_backward(g, x, theta_c, argmax)
    assert torch.equal(dx, dx2) and torch.equal(dtheta, dtheta2), "affine_hpool_backward is not bitwise deterministic"
    return out, argmax, dx, dtheta


@pytest.mark.parametrize("kind", ["sc", "rotated", "outside"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_affine_hpool(shape, dtype, kind):
    x = make_x(shape, dtype, seed=11)
    check_affine(x, make_theta(kind, shape[0], seed=12), dtype, TOL[dtype])


@pytest.mark.parametrize("shape", list(PAPER_BATCH.values()), ids=list(PAPER_BATCH))
def test_affine_hpool_paper_batch(shape):
    x = make_x(shape, torch.float32, seed=41)
    check_affine(x, make_theta("rotated", shape[0], seed=42), torch.float32, TOL[torch.float32], ref_device="cuda")


def test_affine_hpool_backward_stages_only_initialised_memory(tmp_path):
    """compute-sanitizer initcheck over the backward with most samples outside the map: the transposed
    pattern's unused slots are never written, so they must never be staged or read either."""
    import os
    import shutil
    import subprocess
    import sys

    tool = shutil.which("compute-sanitizer") or (
        os.path.join(os.environ["CUDA_HOME"], "bin", "compute-sanitizer") if os.environ.get("CUDA_HOME") else None
    )
    if tool is None or not os.path.exists(tool):
        pytest.skip("compute-sanitizer not found (CUDA toolkit)")
    script = tmp_path / "initcheck_affine.py"
    script.write_text(
        "import torch\n"
        "import scstn_vcn._C  # noqa: F401  (registers the native ops)\n"
        "x = torch.randn(2, 70, 24, 8, device='cuda')\n"
        "theta = torch.tensor([[[1.7, 0.1, 0.9], [0.0, 1.9, -0.9]]] * 2, device='cuda')\n"
        "out, argmax = torch.ops.scstn_vcn.affine_hpool(x, theta)\n"
        "torch.ops.scstn_vcn.affine_hpool_backward(torch.randn_like(out), x, theta, argmax)\n"
        "torch.cuda.synchronize()\n"
    )
    done = subprocess.run(
        [tool, "--tool", "initcheck", "--error-exitcode", "3", sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.parametrize("kind", ["sc", "rotated", "outside"])
@pytest.mark.parametrize("shape", list(EXTRA_SHAPES.values()), ids=list(EXTRA_SHAPES))
def test_affine_hpool_other_shapes(shape, kind):
    for dtype in (torch.float32, torch.float64):
        x = make_x(shape, dtype, seed=13)
        check_affine(x, make_theta(kind, shape[0], seed=14), dtype, TOL[dtype])


def test_affine_hpool_identity():
    """Identity samples land exactly on pixels: out is mean + max of x's rows, ties go first.
    (dtheta is not compared here: at integer positions it is a one-sided difference whose side
    depends on the last bit of the position, which float32 and float64 need not share.)"""
    x = torch.randint(0, 4, (2, 70, 24, 8), generator=torch.Generator().manual_seed(15)).float().cuda()
    theta = make_theta("identity", 2, seed=0)
    out, argmax, _, _ = check_affine(x, theta, torch.float32, TOL[torch.float32], check_theta_grad=False)
    xc = x.cpu()
    assert torch.allclose(out.cpu(), xc.mean(-1) + xc.max(-1).values, rtol=0, atol=1e-6)
    assert torch.equal(argmax.long().cpu(), first_argmax(xc))


def test_affine_hpool_channels_last():
    x = make_x(SHAPES["O"], torch.float32, seed=16)
    theta = make_theta("rotated", x.shape[0], seed=17).float().cuda()
    cl = x.to(memory_format=torch.channels_last)
    out, argmax = NATIVE.affine_hpool(x, theta)
    out_cl, argmax_cl = NATIVE.affine_hpool(cl, theta)
    assert torch.equal(out, out_cl) and torch.equal(argmax, argmax_cl)
    g = torch.randn_like(out)
    for a, b in zip(
        NATIVE.affine_hpool_backward(g, x, theta, argmax), NATIVE.affine_hpool_backward(g, cl, theta, argmax)
    ):
        assert torch.equal(a, b)


def autograd_matches_direct_op(rotation_free, forward, backward, seeds):
    """ops.affine_hpool(rotation_free=...) through autograd gives bitwise the gradients of the direct
    native backward call; returns dtheta."""
    x = make_x((2, 130, 24, 8), torch.float32, seed=seeds[0]).requires_grad_()
    theta = make_theta("rotated", 2, seed=seeds[1]).float().cuda().requires_grad_()
    out = ops.affine_hpool(x, theta, rotation_free=rotation_free, backend="native")
    g = torch.randn_like(out)
    dx, dtheta = torch.autograd.grad(out, (x, theta), g)
    _, argmax = forward(x.detach(), theta.detach())
    ref_dx, ref_dtheta = backward(g, x.detach(), theta.detach(), argmax)
    assert torch.equal(dx, ref_dx) and torch.equal(dtheta, ref_dtheta)
    return dtheta


def test_affine_hpool_autograd_matches_direct_op():
    autograd_matches_direct_op(False, NATIVE.affine_hpool, NATIVE.affine_hpool_backward, seeds=(18, 19))


# ------------------------------------------------------------------------------------------------
# vertical_proj


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape", [(8, 2048, 24, 6), (8, 2048, 48, 6), (3, 5, 40, 11), (50, 5, 40, 11)], ids=["O", "M", "odd", "split"]
)  # split: ddelta over 3 uneven splits of the batch
def test_vertical_proj(shape, dtype):
    B, C, H, K = shape
    gen = torch.Generator().manual_seed(21)
    Fm = torch.randn(B, C, H, generator=gen).to(dtype).cuda()
    delta = torch.randn(C, K, H, generator=gen).to(compute_dtype(dtype)).cuda()
    f = NATIVE.vertical_proj(Fm, delta)
    assert f.shape == (B, C, K) and f.dtype == dtype
    F64 = Fm.double().cpu().requires_grad_()
    d64 = delta.double().cpu().requires_grad_()
    ref = ops.vertical_proj_eager(F64, d64)
    assert_near(f, ref, TOL[dtype], "f")
    g = torch.randn(B, C, K, generator=gen).to(dtype).cuda()
    dF, ddelta = NATIVE.vertical_proj_backward(g, Fm, delta)
    assert dF.dtype == dtype and ddelta.dtype == delta.dtype and dF.is_contiguous() and ddelta.is_contiguous()
    ref_dF, ref_ddelta = torch.autograd.grad(ref, (F64, d64), g.double().cpu())
    assert_near(dF, ref_dF, TOL[dtype], "dF")
    assert_near(ddelta, ref_ddelta, 1e-4, "ddelta")
    dF2, ddelta2 = NATIVE.vertical_proj_backward(g, Fm, delta)
    assert torch.equal(dF, dF2) and torch.equal(ddelta, ddelta2), "vertical_proj_backward is not bitwise deterministic"


@pytest.mark.parametrize("shape", [(96, 2048, 24, 6), (96, 2048, 48, 6)], ids=["O96", "M96"])
def test_vertical_proj_paper_batch(shape):
    test_vertical_proj(shape, torch.float32)


def test_vertical_proj_autograd_matches_direct_op():
    Fm = torch.randn(4, 33, 24, device="cuda", requires_grad=True)
    delta = torch.randn(33, 6, 24, device="cuda", requires_grad=True)
    f = ops.vertical_proj(Fm, delta, backend="native")
    g = torch.randn_like(f)
    dF, ddelta = torch.autograd.grad(f, (Fm, delta), g)
    ref_dF, ref_ddelta = NATIVE.vertical_proj_backward(g, Fm.detach(), delta.detach())
    assert torch.equal(dF, ref_dF) and torch.equal(ddelta, ref_ddelta)


# ------------------------------------------------------------------------------------------------
# input errors (direct calls, so the C++ checks are what answers)


def assert_affine_input_errors(forward, backward, x, theta):
    """The input checks that the general and the separable affine_hpool ops share: theta's shape, dtype
    and device, the backward's argmax dtype and grad_out shape."""
    with pytest.raises(RuntimeError, match="theta must have shape"):
        forward(x, theta[:1])
    with pytest.raises(RuntimeError, match="theta must be"):
        forward(x, theta.double())
    with pytest.raises(RuntimeError, match="theta must be on the same device"):
        forward(x, theta.cpu())
    out, argmax = forward(x, theta)
    with pytest.raises(RuntimeError, match="argmax must be"):
        backward(out, x, theta, argmax.long())
    with pytest.raises(RuntimeError, match="grad_out must have shape"):
        backward(out[:, :2], x, theta, argmax)


def test_bad_inputs():
    x = torch.randn(2, 3, 4, 5, device="cuda")
    theta = torch.eye(2, 3, device="cuda").expand(2, 2, 3).contiguous()
    with pytest.raises(RuntimeError, match="x must be 4-D"):
        NATIVE.channel_pool(x[0])
    with pytest.raises(RuntimeError, match="x must be float16, bfloat16, float32 or float64"):
        NATIVE.channel_pool(x.int())
    assert_affine_input_errors(NATIVE.affine_hpool, NATIVE.affine_hpool_backward, x, theta)
    cmean, gpool, cargmax = NATIVE.channel_pool(x)
    with pytest.raises(RuntimeError, match="grad_gpool must have shape"):
        NATIVE.channel_pool_backward(cmean, gpool[:1], cargmax, x)
    with pytest.raises(RuntimeError, match="argmax must have shape"):
        NATIVE.channel_pool_backward(cmean, gpool, cargmax[:, :1], x)
    Fm = torch.randn(2, 3, 4, device="cuda")
    with pytest.raises(RuntimeError, match="delta must have shape"):
        NATIVE.vertical_proj(Fm, torch.randn(3, 6, 5, device="cuda"))
    with pytest.raises(RuntimeError, match="delta must be"):
        NATIVE.vertical_proj(Fm, torch.randn(3, 6, 4, device="cuda", dtype=torch.float64))
    with pytest.raises(RuntimeError, match="grad_f must have shape"):
        NATIVE.vertical_proj_backward(torch.randn(2, 3, 5, device="cuda"), Fm, torch.randn(3, 6, 4, device="cuda"))


# ------------------------------------------------------------------------------------------------
# affine_hpool_separable (rotation-free theta: theta[:, 0, 1] and theta[:, 1, 0] ignored)

ROTATION_FREE = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)


def check_separable(x, theta, dtype, tol, ref_device="cpu"):
    """NATIVE.affine_hpool_separable against float64 grid_sample on theta with its off-diagonal entries
    zeroed, as check_affine: argmax a maximum within rounding (the first where clear), gradients through
    the kernel's own argmax, off-diagonal gradients exactly 0, bitwise-deterministic backward."""
    B, C, H, W = x.shape
    theta_c = theta.to(compute_dtype(dtype)).cuda()
    out, argmax = NATIVE.affine_hpool_separable(x, theta_c)
    assert out.shape == (B, C, H) and out.dtype == dtype and argmax.dtype == torch.int32 and out.is_contiguous()
    x64 = x.double().to(ref_device).contiguous()
    t64 = theta_c.double().to(ref_device) * ROTATION_FREE.to(ref_device)
    r64 = resampled_ref(x64, t64)
    assert_near(out, r64.mean(-1) + r64.max(-1).values, tol, "out")
    a = assert_first_max(argmax, r64, ref_device)
    del r64

    g = torch.randn(B, C, H, generator=torch.Generator().manual_seed(7)).to(dtype).cuda()
    dx, dtheta = NATIVE.affine_hpool_separable_backward(g, x, theta_c, argmax)
    assert dx.shape == x.shape and dx.dtype == dtype and dx.is_contiguous()
    assert dtheta.shape == (B, 2, 3) and dtheta.dtype == theta_c.dtype and dtheta.is_contiguous()
    assert bool((dtheta[:, 0, 1] == 0).all()) and bool((dtheta[:, 1, 0] == 0).all())
    ref_dx, ref_dtheta = reference_grads(x64, t64, a, g, ref_device)
    assert_near(dx, ref_dx, tol, "dx")
    assert_near(dtheta, ref_dtheta * ROTATION_FREE.to(ref_device), 1e-3 if dtype != torch.float64 else 1e-9, "dtheta")
    dx2, dtheta2 = NATIVE.affine_hpool_separable_backward(g, x, theta_c, argmax)
    assert torch.equal(dx, dx2) and torch.equal(dtheta, dtheta2), "separable backward is not bitwise deterministic"
    return out, argmax, dx, dtheta


@pytest.mark.parametrize("kind", ["sc", "outside"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_separable(shape, dtype, kind):
    x = make_x(shape, dtype, seed=51)
    check_separable(x, make_theta(kind, shape[0], seed=52), dtype, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", list(PAPER_BATCH.values()), ids=list(PAPER_BATCH))
def test_separable_paper_batch(shape, dtype):
    x = make_x(shape, dtype, seed=53)
    check_separable(x, make_theta("sc", shape[0], seed=54), dtype, TOL[dtype], ref_device="cuda")


@pytest.mark.parametrize("kind", ["sc", "outside", "rotated"])  # "rotated": the off-diagonals are ignored
@pytest.mark.parametrize("shape", list(EXTRA_SHAPES.values()), ids=list(EXTRA_SHAPES))
def test_separable_other_shapes(shape, kind):
    # "large": a 130 x 132 map does not fit in shared memory, the maps are read from global memory
    for dtype in (torch.float32, torch.float64):
        x = make_x(shape, dtype, seed=55)
        check_separable(x, make_theta(kind, shape[0], seed=56), dtype, TOL[dtype])


def test_separable_layouts_give_bitwise_equal_results():
    """channels_last and a strided view (no unit stride along w) are read in place, with the results of
    their contiguous copies, bitwise."""
    theta = make_theta("sc", 4, seed=58).float().cuda()
    x = make_x(SHAPES["O"], torch.float32, seed=57)
    wide = make_x((4, 2048, 24, 16), torch.float32, seed=59)
    for layout in (x.to(memory_format=torch.channels_last), wide[..., ::2]):
        dense = layout.contiguous()
        out, argmax = NATIVE.affine_hpool_separable(dense, theta)
        out_l, argmax_l = NATIVE.affine_hpool_separable(layout, theta)
        assert torch.equal(out, out_l) and torch.equal(argmax, argmax_l)
        g = torch.randn_like(out)
        for got, want in zip(
            NATIVE.affine_hpool_separable_backward(g, layout, theta, argmax),
            NATIVE.affine_hpool_separable_backward(g, dense, theta, argmax),
        ):
            assert torch.equal(got, want)


def test_separable_matches_the_general_kernel_on_rotation_free_theta():
    """Same sample positions (the same fma) and the same bilinear expression as affine_hpool: on a
    rotation-free theta the two agree to rounding, with the same argmax wherever the maximum is clear."""
    x = make_x(SHAPES["M"], torch.float32, seed=60)
    theta = (make_theta("sc", x.shape[0], seed=61) * ROTATION_FREE).float().cuda()
    out, argmax = NATIVE.affine_hpool_separable(x, theta)
    out_g, argmax_g = NATIVE.affine_hpool(x, theta)
    assert_near(out, out_g, 1e-5, "out vs general")
    assert (argmax == argmax_g).float().mean().item() > 0.999
    g = torch.randn_like(out)
    dx, dtheta = NATIVE.affine_hpool_separable_backward(g, x, theta, argmax)
    dx_g, dtheta_g = NATIVE.affine_hpool_backward(g, x, theta, argmax)
    assert_near(dx, dx_g, 1e-5, "dx vs general")
    assert_near(dtheta, dtheta_g, 1e-4, "dtheta vs general")


def test_separable_autograd_matches_direct_op():
    dtheta = autograd_matches_direct_op(
        True, NATIVE.affine_hpool_separable, NATIVE.affine_hpool_separable_backward, seeds=(62, 63)
    )
    assert dtheta[:, 0, 1].abs().sum().item() == 0 and dtheta[:, 1, 0].abs().sum().item() == 0


def test_separable_bad_inputs():
    x = torch.randn(2, 3, 4, 5, device="cuda")
    theta = torch.eye(2, 3, device="cuda").expand(2, 2, 3).contiguous()
    with pytest.raises(RuntimeError, match="x must be 4-D"):
        NATIVE.affine_hpool_separable(x[0], theta)
    assert_affine_input_errors(NATIVE.affine_hpool_separable, NATIVE.affine_hpool_separable_backward, x, theta)
    with pytest.raises(RuntimeError, match="H and W too large"):
        NATIVE.affine_hpool_separable(torch.randn(1, 1, 4000, 4000, device="cuda"), theta[:1])


def test_separable_sanitizer_initcheck_and_racecheck(tmp_path):
    """compute-sanitizer over forward and backward, staged (small map) and global-memory (large map)
    paths, channels_last, most samples outside the map: no uninitialised shared or global reads and no
    shared-memory races."""
    import os
    import shutil
    import subprocess
    import sys

    tool = shutil.which("compute-sanitizer") or (
        os.path.join(os.environ["CUDA_HOME"], "bin", "compute-sanitizer") if os.environ.get("CUDA_HOME") else None
    )
    if tool is None or not os.path.exists(tool):
        pytest.skip("compute-sanitizer not found (CUDA toolkit)")
    script = tmp_path / "sanitize_separable.py"
    script.write_text(
        "import torch\n"
        "import scstn_vcn._C  # noqa: F401  (registers the native ops)\n"
        "ops = torch.ops.scstn_vcn\n"
        "theta = torch.tensor([[[1.7, 0.1, 0.9], [0.0, 1.9, -0.9]], [[0.8, 0.0, 0.1], [0.0, 1.1, 0.2]]],\n"
        "                     device='cuda')\n"
        "for shape in [(2, 70, 24, 8), (2, 3, 130, 132)]:\n"
        "    dense = torch.randn(shape, device='cuda')\n"
        "    for x in (dense, dense.to(memory_format=torch.channels_last)):\n"
        "        for t in (theta, theta.double()):\n"
        "            xx = x.double() if t.dtype == torch.float64 else x\n"
        "            out, argmax = ops.affine_hpool_separable(xx, t)\n"
        "            ops.affine_hpool_separable_backward(torch.randn_like(out), xx, t, argmax)\n"
        "torch.cuda.synchronize()\n"
    )
    for check in ("initcheck", "racecheck"):
        done = subprocess.run(
            [tool, "--tool", check, "--error-exitcode", "3", sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, check + ": " + done.stdout[-3000:] + done.stderr[-3000:]
