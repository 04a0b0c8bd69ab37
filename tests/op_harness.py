"""The random-case harness every backend of the three ops is tested with (affine_hpool also as
affine_hpool_separable: ops.affine_hpool(..., rotation_free=True), whose reference is the general eager
op on theta with its off-diagonal entries masked to 0 -- so "general" thetas test that masking too).

A case holds float64 master values and a memory layout. For a given dtype the values are rounded to
that dtype and laid out (contiguous, channels_last, a strided slice, a transpose); the backend under
test runs forward and backward on them, and the reference is the float64 eager op on the SAME rounded
values, differentiated by torch's autograd. So a low-precision case measures only the backend's own
arithmetic, not the rounding of its inputs.
"""

import dataclasses
import math

import torch

from scstn_vcn import ops

DTYPES = (torch.float32, torch.float64, torch.float32, torch.bfloat16, torch.float16)
LAYOUTS = ("contiguous", "channels_last", "strided", "transposed")

# Allowed max |result - reference| relative to max(1, max |reference|), per dtype of the inputs.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3}


@dataclasses.dataclass
class Case:
    name: str
    dtype: torch.dtype
    values: dict  # name -> float64 tensor
    layout: str = "contiguous"

    def __repr__(self):
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self.values.items())
        return f"{self.name}[{str(self.dtype).removeprefix('torch.')}, {self.layout}, {shapes}]"


def lay_out(values, dtype, layout, device="cpu"):
    """`values` rounded to `dtype` on `device`, in the memory layout `layout` (4-D layouts apply to 4-D tensors)."""
    rounded = values.to(device=device, dtype=dtype, copy=True)  # never the master itself: grads would pile up
    if layout == "channels_last" and rounded.dim() == 4:
        return rounded.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        # every other element of a twice-as-wide buffer: a non-contiguous view
        big = torch.zeros(*rounded.shape[:-1], 2 * rounded.shape[-1], dtype=dtype, device=device)
        big[..., ::2] = rounded
        return big[..., ::2]
    if layout == "transposed" and rounded.dim() >= 3:
        return rounded.transpose(-1, -2).contiguous().transpose(-1, -2)
    return rounded.contiguous()


def _sizes(gen, limits):
    return [int(torch.randint(1, hi + 1, (1,), generator=gen)) for hi in limits]


def _theta(gen, batch, kind):
    """An affine theta of one of several kinds; most send some samples outside the map."""
    u = lambda *shape: torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1  # noqa: E731
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
    if kind == "norot":  # SC-STN's form: scale and translate only
        theta[:, 0, 0] = 1 + 0.5 * u(batch)
        theta[:, 1, 1] = 1 + 0.5 * u(batch)
        theta[:, :, 2] = 0.6 * u(batch, 2)
    elif kind == "general":  # rotation and shear as well
        theta[:] = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64) + 0.7 * u(batch, 2, 3)
    elif kind == "outside":  # mostly or wholly outside the map
        theta[:, 0, 0] = 1 + 0.5 * u(batch)
        theta[:, 1, 1] = 1 + 0.5 * u(batch)
        theta[:, :, 2] = 1.5 * torch.sign(u(batch, 2)) + 0.8 * u(batch, 2)
    elif kind == "zoom":  # strong zoom in or out
        scale = torch.where(u(batch) > 0, 0.3, 1.8).to(torch.float64)
        theta[:, 0, 0] = scale * (1 + 0.1 * u(batch))
        theta[:, 1, 1] = scale * (1 + 0.1 * u(batch))
        theta[:, :, 2] = 0.3 * u(batch, 2)
    else:
        raise ValueError(f"unknown theta kind {kind!r}")
    return theta


THETA_KINDS = ("norot", "general", "outside", "zoom")
AFFINE_OPS = ("affine_hpool", "affine_hpool_separable")

# affine_hpool is not differentiable where a row's two largest samples tie or where a sample lies on a
# pixel boundary (floor() jumps); at such points float32 rounding may legitimately pick the other side.
# The harness redraws cases that come within these margins, so that a mismatch means a real error.
MAX_GAP_MARGIN = 1e-5  # relative to max(1, |x|max)
PIXEL_BOUNDARY_MARGIN = 1e-4  # in pixels


def _away_from_kinks(x, theta, dtype, rotation_free=False):
    """True when the rounded case is well inside differentiable territory (see the margins above);
    rotation_free: for the op that takes theta's off-diagonal entries as 0."""
    import torch.nn.functional as F

    x = x.to(dtype).double()
    theta = theta.to(dtype).double()
    if rotation_free:
        theta = theta * torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    height, width = x.shape[2], x.shape[3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    for coordinate, size in ((grid[..., 0], width), (grid[..., 1], height)):
        pixel = ((coordinate + 1) * size - 1) / 2
        inside = (pixel > -1) & (pixel < size)
        if ((pixel - pixel.round()).abs()[inside] < PIXEL_BOUNDARY_MARGIN).any():
            return False
    if width < 2:
        return True
    resampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    top = resampled.topk(2, dim=-1).values
    gap = top[..., 0] - top[..., 1]
    exact_tie = gap == 0  # e.g. samples wholly outside the map: equal in every precision
    return bool(((gap > MAX_GAP_MARGIN * max(1.0, x.abs().max().item())) | exact_tie).all())


def random_cases(op, count, seed, limits=(3, 40, 12, 8)):
    """`count` random cases of `op`, sizes drawn up to limits = (B, C, H, W), dtypes and layouts cycled."""
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for index in range(count):
        batch, channels, height, width = _sizes(gen, limits)
        if index % 7 == 0:  # odd sizes for sure in a share of the cases
            channels, height, width = channels | 1, height | 1, width | 1
        dtype = DTYPES[index % len(DTYPES)]
        layout = LAYOUTS[(index // len(DTYPES)) % len(LAYOUTS)]
        randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
        if op == "channel_pool":
            values = {"x": randn(batch, channels, height, width)}
        elif op in AFFINE_OPS:
            kind = THETA_KINDS[index % len(THETA_KINDS)]
            for _ in range(50):
                values = {"x": randn(batch, channels, height, width), "theta": _theta(gen, batch, kind)}
                if _away_from_kinks(values["x"], values["theta"], dtype, rotation_free=op == "affine_hpool_separable"):
                    break
            else:
                raise RuntimeError(f"could not draw a well-conditioned affine_hpool case {index}")
        elif op == "vertical_proj":
            kernels = int(torch.randint(1, 8, (1,), generator=gen))
            values = {
                "F": randn(batch, channels, height),
                "delta": randn(channels, kernels, height) / math.sqrt(height),
            }
        else:
            raise ValueError(f"unknown op {op!r}")
        cases.append(Case(f"{op}-{index}", dtype, values, layout))
    return cases


def call_op(op, inputs, backend):
    """The public op on a dict of named inputs; always a tuple of outputs."""
    if op == "channel_pool":
        return ops.channel_pool(inputs["x"], backend=backend)
    if op == "affine_hpool":
        return (ops.affine_hpool(inputs["x"], inputs["theta"], backend=backend),)
    if op == "affine_hpool_separable":
        return (ops.affine_hpool(inputs["x"], inputs["theta"], rotation_free=True, backend=backend),)
    return (ops.vertical_proj(inputs["F"], inputs["delta"], backend=backend),)


def run(op, case, backend, device="cpu", upstream_seed=0):
    """Forward outputs and input gradients of `op` on `case` with `backend`, and the float64 reference
    (computed on the CPU)."""
    inputs = {k: lay_out(v, case.dtype, case.layout, device).requires_grad_() for k, v in case.values.items()}
    reference_inputs = {k: v.detach().to("cpu", torch.float64).requires_grad_() for k, v in inputs.items()}

    outputs = call_op(op, inputs, backend)
    reference = call_op(op, reference_inputs, "eager")
    gen = torch.Generator().manual_seed(upstream_seed)
    upstream = [torch.randn(r.shape, generator=gen, dtype=torch.float64) for r in reference]
    torch.autograd.backward(outputs, [u.to(o.device, o.dtype) for u, o in zip(upstream, outputs)])
    # the reference sees the same upstream gradients, rounded as the backend saw them
    torch.autograd.backward(reference, [u.to(o.dtype).to(torch.float64) for u, o in zip(upstream, outputs)])
    got = {f"out{i}": o.detach().cpu() for i, o in enumerate(outputs)}
    got.update({f"grad_{k}": None if v.grad is None else v.grad.cpu() for k, v in inputs.items()})
    want = {f"out{i}": r.detach() for i, r in enumerate(reference)}
    want.update({f"grad_{k}": v.grad for k, v in reference_inputs.items()})
    return got, want


def assert_close_to_reference(op, case, backend, device="cpu"):
    got, want = run(op, case, backend, device)
    tolerance = TOLERANCE[case.dtype]
    for name, expected in want.items():
        actual = got[name]
        assert actual is not None, f"{case}: {backend} produced no {name}"
        assert actual.shape == expected.shape, f"{case}: {name} shape {tuple(actual.shape)} != {tuple(expected.shape)}"
        assert actual.dtype == case.dtype, f"{case}: {name} has dtype {actual.dtype}, expected {case.dtype}"
        error = (actual.to(torch.float64) - expected).abs().max().item()
        scale = max(1.0, expected.abs().max().item())
        assert error <= tolerance * scale, (
            f"{case}: backend {backend!r} {name} differs from fp64 eager by {error:.3g} "
            f"(allowed {tolerance * scale:.3g})"
        )


def fused_backends(device="cpu"):
    """The fused backends that run on `device` in this process."""
    return [name for name in ops.available_backends(device) if name != "eager"]


def device_backends(fused_only=False):
    """(device, backend) pairs to parametrise the op tests with: every backend available on the CPU, and
    on CUDA when a GPU is present."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [
        (device, name)
        for device in devices
        for name in ops.available_backends(device)
        if not (fused_only and name == "eager")
    ]


def kernel_inputs(op, case):
    """Arguments for calling the registered forward op directly, as the Python layer passes them."""
    inputs = {k: lay_out(v, case.dtype, case.layout) for k, v in case.values.items()}
    compute = torch.float64 if case.dtype == torch.float64 else torch.float32
    if op == "channel_pool":
        return (inputs["x"],)
    if op in AFFINE_OPS:
        return inputs["x"], inputs["theta"].to(compute).contiguous()
    return inputs["F"].contiguous(), inputs["delta"].to(compute).contiguous()
