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
  affine_hpool_separable   (affine_hpool(..., rotation_free=True)): the same as affine_hpool
  vertical_proj  fwd: F B C H s + delta C K H a + f B C K s
                 bwd: grad_f B C K s + F B C H s + delta C K H a + dF B C H s + ddelta C K H a
"""

import functools
import json
import math
import os
import re
import time

import torch

from scstn_vcn import ops

OPS = ("channel_pool", "affine_hpool", "affine_hpool_separable", "vertical_proj")
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
    if op in ("affine_hpool", "affine_hpool_separable"):
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
    elif op in ("affine_hpool", "affine_hpool_separable"):
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


def make_step(op, backend, inputs, mode, synchronize=True):
    """The timed function: forward (and backward) once, then a device synchronisation, so that the
    time measured is the time of the work and not of its launch. synchronize=False leaves the work
    queued, for cuda_times (which brackets it with CUDA events)."""
    fn = op_function(op, backend)
    device = inputs[0].device
    sync = torch.cuda.synchronize if device.type == "cuda" and synchronize else (lambda: None)
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


# --- timing on CUDA ----------------------------------------------------------------------------------
#
# On the CPU a case is timed with perf_counter around the synchronous call (pytest-benchmark's timer,
# median_seconds). On CUDA that mostly measures Python, dispatch and launch for kernels of 5-100 us, and
# an input smaller than the L2 cache (50 MB on an H100) is served from L2 on every repetition after the
# first, so the GB/s could exceed what memory delivers. cuda_times therefore flushes L2 before every call
# and reports two times: the kernel time (CUDA events, GPU execution only) and the host-inclusive wall
# time (perf_counter from an idle GPU to the end of the work), kept apart.

L2_FLUSH_MIN_BYTES = 256 * 2**20
COPY_GBPS_ENV = "SCSTN_VCN_COPY_GBPS"  # a measured copy bandwidth to reuse (benchmarks/gpu_check.sh sets it)

_flush_buffers = {}
_cycles_per_second = {}


def _cuda_device(device):
    device = torch.device(device)
    return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)


def flush_l2(device):
    """Queue a write of a buffer of at least 256 MB and four times the L2 size: whatever the next op
    reads then comes from device memory, as it does in a network where other layers ran in between."""
    device = _cuda_device(device)
    buffer = _flush_buffers.get(device)
    if buffer is None:
        l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0
        buffer = torch.empty(max(L2_FLUSH_MIN_BYTES, 4 * l2_bytes), dtype=torch.int8, device=device)
        _flush_buffers[device] = buffer
    buffer.zero_()


def _gpu_cycles_per_second(device):
    """The rate at which torch.cuda._sleep spins, measured once per device with CUDA events."""
    device = _cuda_device(device)
    if device not in _cycles_per_second:
        with torch.cuda.device(device):
            cycles = 10_000_000
            torch.cuda._sleep(1000)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.cuda._sleep(cycles)
            end.record()
            end.synchronize()
            _cycles_per_second[device] = cycles / (start.elapsed_time(end) / 1e3)
    return _cycles_per_second[device]


def cuda_times(step, reps, device, flush=True, wall=True):
    """(kernel seconds, wall seconds), `reps` of each, of step() on CUDA: step queues the work without
    synchronising (make_step(..., synchronize=False)) and has been warmed up (compiled) before.

    kernel: CUDA events around each call. Before it the GPU is kept busy (the L2 flush, then a spin of
            about twice the host time of one call), so the host queues the call ahead of the GPU and the
            events time the GPU's execution, not the gaps while Python launches kernels one by one.
    wall:   perf_counter from a synchronised, idle GPU to the end of the call, synchronised: what a caller
            waits for, Python, dispatch and launches included.
    L2 is flushed before every call, outside what is timed (flush=False keeps the cache warm);
    wall=False skips the wall loop and returns None for it.
    """
    device = _cuda_device(device)
    with torch.cuda.device(device):
        host = []
        for _ in range(3):
            torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            host.append(time.perf_counter() - start)
        torch.cuda.synchronize()
        spin_cycles = int(min(0.05, 2 * sorted(host)[1] + 20e-6) * _gpu_cycles_per_second(device))

        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for start, end in zip(starts, ends):
            if flush:
                flush_l2(device)
            torch.cuda._sleep(spin_cycles)
            start.record()
            step()
            end.record()
        torch.cuda.synchronize()
        kernel = [start.elapsed_time(end) / 1e3 for start, end in zip(starts, ends)]

        if not wall:
            return kernel, None
        wall = []
        for _ in range(reps):
            if flush:
                flush_l2(device)
            torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            torch.cuda.synchronize()
            wall.append(time.perf_counter() - start)
    return kernel, wall


def median(values):
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def copy_bandwidth_gbps(device, reps=10):
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written per second): the basis of
    each op's memory floor, min_bytes / bandwidth. A value in $SCSTN_VCN_COPY_GBPS is used as it is,
    so that every process of one benchmark run divides by the same figure.

    CUDA: a 1 GiB copy between two 1 GiB buffers (far beyond L2), timed with CUDA events, median of
    `reps`. CPU: a 256 MiB copy timed with perf_counter (the smoke runs' stand-in)."""
    forced = os.environ.get(COPY_GBPS_ENV)
    if forced:
        try:
            value = float(forced)
        except ValueError:
            raise ValueError(f"${COPY_GBPS_ENV} must be a number of GB/s, got {forced!r}") from None
        if not value > 0:
            raise ValueError(f"${COPY_GBPS_ENV} must be a positive number of GB/s, got {forced!r}")
        return value
    return _measured_copy_gbps(str(torch.device(device)), reps)


@functools.cache
def _measured_copy_gbps(device, reps):
    device = torch.device(device)
    if device.type == "cuda":
        nbytes = 2**30
        src = torch.empty(nbytes, dtype=torch.int8, device=device).fill_(1)
        dst = torch.empty_like(src)
        dst.copy_(src)
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        del src, dst
        torch.cuda.empty_cache()
    else:
        nbytes = 256 * 2**20
        src = torch.ones(nbytes, dtype=torch.int8)
        dst = torch.empty_like(src)
        dst.copy_(src)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - start)
    return 2 * nbytes / median(times) / 1e9


def floor_seconds(nbytes, copy_gbps):
    """The memory floor: the time to move the op's minimum bytes at the measured copy bandwidth."""
    return nbytes / (copy_gbps * 1e9)


def write_json(path, document):
    """Write `document` as JSON atomically (a temporary file renamed over `path`): a reader, or a kill
    mid-run, never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(document, handle, indent=1)
    os.replace(tmp, path)


def status_kib(field):
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in KiB (Linux)."""
    with open("/proc/self/status") as handle:
        return int(re.search(rf"^{field}:\s+(\d+) kB", handle.read(), re.M).group(1))


def reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux: clear_refs 5); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def timed_peak(device, fn):
    """(seconds, peak extra MiB or None, fn's result) of one call of ``fn()`` on ``device``: synchronised
    wall time, and the peak memory above what was in use before the call (CUDA: the allocator's peak; CPU:
    VmHWM after a reset, None where the kernel does not allow the reset)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        can_reset = reset_peak_rss()
        base = status_kib("VmRSS")
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = (status_kib("VmHWM") - base) / 1024 if can_reset else None
    return seconds, peak, result
