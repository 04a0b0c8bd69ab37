"""Inputs, callables and minimum memory traffic of the three ops, for benchmarks/test_ops.py.

Minimum bytes: every input of the op read once and every output written once (the traffic of an ideal
fused kernel). For forward+backward it is the forward's minimum plus the backward op's minimum (its
inputs: upstream gradients, the saved tensors it needs; its outputs: the input gradients), as the
fused backends' registered backward ops take them. s = itemsize of the activations, a = itemsize of the
compute dtype (theta, delta), i = 4 (int32 argmax).

  channel_pool   fwd: x B C H W s  + cmean B H W s + gpool B C s + argmax B C i
                 bwd: grad_cmean B H W s + grad_gpool B C s + argmax B C i + dx B C H W s
  affine_hpool   fwd: x B C H W s  + theta 6 B a + out B C H s + argmax B C H i
                 bwd: grad_out B C H s + x B C H W s + theta 6 B a + argmax B C H i
                      + dx B C H W s + dtheta 6 B a
  vertical_proj  fwd: F B C H s + delta C K H a + f B C K s
                 bwd: grad_f B C K s + F B C H s + delta C K H a + dF B C H s + ddelta C K H a
"""

import math
import time

import torch

from scstn_vcn import ops

OPS = ("channel_pool", "affine_hpool", "vertical_proj")
K_KERNELS = 6  # VCN kernels per channel (paper: K = 6)


def compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def make_inputs(op, shape, dtype, device, seed=0):
    """Inputs of `op` for the feature-map shape (B, C, H, W), as the model produces them."""
    gen = torch.Generator().manual_seed(seed)
    B, C, H, W = shape
    compute = compute_dtype(dtype)
    if op == "channel_pool":
        return [torch.randn(B, C, H, W, generator=gen).to(device, dtype)]
    if op == "affine_hpool":
        # SC-STN's theta: scale and translate, no rotation, near the identity
        theta = torch.zeros(B, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = 1 + 0.3 * (torch.rand(B, generator=gen, dtype=torch.float64) - 0.5)
        theta[:, 1, 1] = 1 + 0.3 * (torch.rand(B, generator=gen, dtype=torch.float64) - 0.5)
        theta[:, :, 2] = 0.3 * (torch.rand(B, 2, generator=gen, dtype=torch.float64) - 0.5)
        return [torch.randn(B, C, H, W, generator=gen).to(device, dtype), theta.to(device, compute)]
    F = torch.randn(B, C, H, generator=gen).to(device, dtype)
    delta = (torch.randn(C, K_KERNELS, H, generator=gen) / math.sqrt(H)).to(device, compute)
    return [F, delta]


def min_bytes(op, shape, dtype, mode):
    """The op's minimum memory traffic in bytes (module docstring), mode "fwd" or "fwdbwd"."""
    B, C, H, W = shape
    s = torch.empty((), dtype=dtype).element_size()
    a = torch.empty((), dtype=compute_dtype(dtype)).element_size()
    i = 4
    if op == "channel_pool":
        fwd = B * C * H * W * s + B * H * W * s + B * C * s + B * C * i
        bwd = B * H * W * s + B * C * s + B * C * i + B * C * H * W * s
    elif op == "affine_hpool":
        fwd = B * C * H * W * s + 6 * B * a + B * C * H * s + B * C * H * i
        bwd = B * C * H * s + B * C * H * W * s + 6 * B * a + B * C * H * i + B * C * H * W * s + 6 * B * a
    else:
        K = K_KERNELS
        fwd = B * C * H * s + C * K * H * a + B * C * K * s
        bwd = B * C * K * s + B * C * H * s + C * K * H * a + B * C * H * s + C * K * H * a
    return fwd if mode == "fwd" else fwd + bwd


def op_function(op, backend):
    """A callable (*inputs) -> tuple of outputs running `op` with `backend`; "compile" is torch.compile of
    the eager reference (inductor, static shapes)."""
    if backend == "compile":
        eager = getattr(ops, f"{op}_eager")
        return torch.compile(eager, dynamic=False)
    fn = getattr(ops, op)
    return lambda *inputs: fn(*inputs, backend=backend)


def _as_tuple(outputs):
    return outputs if isinstance(outputs, tuple) else (outputs,)


def make_step(op, backend, inputs, mode):
    """The timed function: forward (and backward) once, then a device synchronisation, so that the
    time measured is the time of the work and not of its launch."""
    fn = op_function(op, backend)
    device = inputs[0].device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if mode == "fwd":

        def step():
            with torch.no_grad():
                fn(*inputs)
            sync()

        return step
    leaves = [t.detach().requires_grad_() for t in inputs]
    outputs = _as_tuple(fn(*leaves))
    upstream = [torch.randn_like(o) for o in outputs]

    def step():
        outs = _as_tuple(fn(*leaves))
        torch.autograd.grad(outs, leaves, upstream)
        sync()

    return step


def median_seconds(step, rounds):
    """Median wall time of `rounds` calls of step (after one warm-up call): the eager baseline when it
    has to be measured inline."""
    step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]
