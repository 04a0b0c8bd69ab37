"""The native CUDA kernels of scstn_vcn._C against fp64 eager references, at the paper's shapes.

Needs a CUDA device and an extension built with CUDA; skipped otherwise. For each op and each of
float32 / bfloat16 / float16: forward outputs, argmax indices (the FIRST maximum), and every
gradient are compared with the eager reference evaluated in float64 on the upcast inputs, on the
CPU (whose max returns the first maximum). Also: theta with and without rotation and with samples
outside the map, channels_last x, bitwise-deterministic backward, and input errors.

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
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(_REASON is not None, reason=f"native CUDA ops unavailable: {_REASON}")]

NATIVE = torch.ops.scstn_vcn if _REASON is None else None
SHAPES = {"O": (4, 2048, 24, 8), "M": (4, 2048, 48, 16)}
# Small odd sizes (a partial 64-channel block, odd W) and a map too large for shared memory.
EXTRA_SHAPES = {"odd": (3, 70, 5, 7), "large": (2, 3, 130, 132)}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
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
@pytest.mark.parametrize("shape", list(SHAPES.values()) + list(EXTRA_SHAPES.values()), ids=list(SHAPES) + list(EXTRA_SHAPES))
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


def check_affine(x, theta, dtype, tol, check_theta_grad=True):
    B, C, H, W = x.shape
    theta_c = theta.to(compute_dtype(dtype)).cuda()
    out, argmax = NATIVE.affine_hpool(x, theta_c)
    assert out.shape == (B, C, H) and out.dtype == dtype and argmax.dtype == torch.int32
    x64 = x.double().cpu().contiguous()
    t64 = theta_c.double().cpu()
    assert_near(out, ops.affine_hpool_eager(x64, t64), tol, "out")

    # argmax: a maximum of the float64 row up to rounding, and the first one where it is clear.
    r64 = resampled_ref(x64, t64)
    a = argmax.long().cpu()
    assert bool(((a >= 0) & (a < W)).all())
    top2 = r64.topk(min(2, W), dim=-1).values
    chosen = r64.gather(-1, a.unsqueeze(-1)).squeeze(-1)
    slack = 1e-5 * max(r64.abs().max().item(), 1.0)
    assert bool((chosen >= top2[..., 0] - slack).all()), "argmax is not a maximum of its row"
    clear = (top2[..., 0] - top2[..., -1]) > slack
    assert torch.equal(a[clear], first_argmax(r64)[clear]), "argmax differs where the maximum is clear"

    gen = torch.Generator().manual_seed(7)
    g = torch.randn(B, C, H, generator=gen).to(dtype).cuda()
    dx, dtheta = NATIVE.affine_hpool_backward(g, x, theta_c, argmax)
    assert dx.shape == x.shape and dx.dtype == dtype and dx.is_contiguous()
    assert dtheta.shape == (B, 2, 3) and dtheta.dtype == theta_c.dtype and dtheta.is_contiguous()
    # Reference gradient: dL/dr = g / W + g at the kernel's argmax, through grid_sample in float64.
    x_ref = x64.clone().requires_grad_()
    t_ref = t64.clone().requires_grad_()
    g64 = g.double().cpu()
    dr = (g64 / W).unsqueeze(-1).expand(B, C, H, W).clone()
    dr.scatter_add_(-1, a.unsqueeze(-1), g64.unsqueeze(-1))
    r = resampled_ref(x_ref, t_ref)
    ref_dx, ref_dtheta = torch.autograd.grad(r, (x_ref, t_ref), dr)
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
    for a, b in zip(NATIVE.affine_hpool_backward(g, x, theta, argmax), NATIVE.affine_hpool_backward(g, cl, theta, argmax)):
        assert torch.equal(a, b)


def test_affine_hpool_autograd_matches_direct_op():
    x = make_x((2, 130, 24, 8), torch.float32, seed=18).requires_grad_()
    theta = make_theta("rotated", 2, seed=19).float().cuda().requires_grad_()
    out = ops.affine_hpool(x, theta, backend="native")
    g = torch.randn_like(out)
    dx, dtheta = torch.autograd.grad(out, (x, theta), g)
    _, argmax = NATIVE.affine_hpool(x.detach(), theta.detach())
    ref_dx, ref_dtheta = NATIVE.affine_hpool_backward(g, x.detach(), theta.detach(), argmax)
    assert torch.equal(dx, ref_dx) and torch.equal(dtheta, ref_dtheta)


# ------------------------------------------------------------------------------------------------
# vertical_proj


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(8, 2048, 24, 6), (8, 2048, 48, 6), (3, 5, 40, 11)], ids=["O", "M", "odd"])
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


def test_bad_inputs():
    x = torch.randn(2, 3, 4, 5, device="cuda")
    theta = torch.eye(2, 3, device="cuda").expand(2, 2, 3).contiguous()
    with pytest.raises(RuntimeError, match="x must be 4-D"):
        NATIVE.channel_pool(x[0])
    with pytest.raises(RuntimeError, match="x must be float16, bfloat16, float32 or float64"):
        NATIVE.channel_pool(x.int())
    with pytest.raises(RuntimeError, match="theta must have shape"):
        NATIVE.affine_hpool(x, theta[:1])
    with pytest.raises(RuntimeError, match="theta must be"):
        NATIVE.affine_hpool(x, theta.double())
    with pytest.raises(RuntimeError, match="theta must be on the same device"):
        NATIVE.affine_hpool(x, theta.cpu())
    out, argmax = NATIVE.affine_hpool(x, theta)
    with pytest.raises(RuntimeError, match="argmax must be"):
        NATIVE.affine_hpool_backward(out, x, theta, argmax.long())
    with pytest.raises(RuntimeError, match="grad_out must have shape"):
        NATIVE.affine_hpool_backward(out[:, :2], x, theta, argmax)
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
