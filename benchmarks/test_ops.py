"""Benchmarks of the three fused ops: eager vs triton vs native vs torch.compile(eager).

Each case times forward ("fwd", under no_grad) or forward + backward ("fwdbwd", torch.autograd.grad of
all inputs) with the device synchronised inside the timed function, and records in extra_info:
  min_bytes  the op's minimum memory traffic (benchmarks/bench_utils.py: inputs read once, outputs once)
  gbps       min_bytes / median time, in GB/s
  speedup    eager median / this median, the eager median measured in the same session
On CUDA pytest-benchmark's time is the host-inclusive wall time (L2 flushed and the GPU idle before each
round), while gbps and speedup use the kernel time (CUDA events, bench_utils.cuda_times), recorded with
kernel_us, wall_us, copy_gbps (measured device-to-device copy bandwidth), floor_us (min_bytes at that
bandwidth) and floor_pct (floor / kernel time). benchmarks/gpu_check.sh runs these measurements as one
command on a GPU.

Cases:
  cuda  shapes (O) 96x2048x24x8 and (M) 96x2048x48x16, float32 and bfloat16, every backend
  cpu   (O) with B = 32, float32, fwd+bwd: eager, native, compile (the native CPU speed targets)
  cpu   a tiny shape, float32: eager, native and triton (interpreted; slow, there to keep the path alive)
A backend that is not available on the machine is skipped with the reason.

Run (writes a JSON with GPU name, torch/triton versions and date in machine_info):
    pytest benchmarks/test_ops.py --benchmark-json=benchmarks/results/ops-$(hostname)-$(date -u +%Y%m%dT%H%MZ).json
Only the GPU cases:  add  -k cuda ;  summary columns:  --benchmark-columns=median,iqr,rounds
"""

import itertools

import pytest
import torch
from bench_utils import (
    OPS,
    copy_bandwidth_gbps,
    cuda_times,
    floor_seconds,
    flush_l2,
    make_inputs,
    make_step,
    median,
    median_seconds,
    min_bytes,
)

from scstn_vcn import ops

HAS_CUDA = torch.cuda.is_available()
SHAPES = {
    "O96": (96, 2048, 24, 8),
    "M96": (96, 2048, 48, 16),
    "O32": (32, 2048, 24, 8),
    "tiny": (2, 16, 6, 4),
}
MODES = ("fwd", "fwdbwd")


def _rounds(device, shape, backend):
    """Rounds timed per case (after a warm-up call that also compiles): many on the GPU; on the CPU few
    at the paper shape (seconds a round) and for the interpreted Triton kernels."""
    if device == "cuda":
        return 50
    if backend == "triton":
        return 3
    return 7 if shape != "tiny" else 10


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def _cases():
    cases = []
    for op, shape, dtype, mode, backend in itertools.product(
        OPS, ("O96", "M96"), (torch.float32, torch.bfloat16), MODES, ("eager", "triton", "native", "compile")
    ):
        cases.append(("cuda", op, shape, dtype, mode, backend))
    for op, backend in itertools.product(OPS, ("eager", "native", "compile")):
        cases.append(("cpu", op, "O32", torch.float32, "fwdbwd", backend))
    for op, mode, backend in itertools.product(OPS, MODES, ("eager", "native", "triton")):
        cases.append(("cpu", op, "tiny", torch.float32, mode, backend))
    params = []
    for device, op, shape, dtype, mode, backend in cases:
        marks = [pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")] if device == "cuda" else []
        case_id = f"{device}-{op}-{shape}-{_dtype_name(dtype)}-{mode}-{backend}"
        params.append(pytest.param(device, op, shape, dtype, mode, backend, marks=marks, id=case_id))
    return params


@pytest.mark.parametrize("device,op,shape,dtype,mode,backend", _cases())
def test_bench_op(benchmark, eager_medians, device, op, shape, dtype, mode, backend):
    if backend != "compile":
        ok, why = ops.backend_status(backend, device)
        if not ok:
            pytest.skip(why)
    elif device == "cuda" and "triton" not in ops.available_backends("cuda"):
        pytest.skip("torch.compile's inductor needs Triton on CUDA")
    benchmark.group = f"{device}-{op}-{shape}-{_dtype_name(dtype)}-{mode}"
    inputs = make_inputs(op, SHAPES[shape], dtype, device)
    step = make_step(op, backend, inputs, mode)
    step()  # warm-up outside the timing: Triton/inductor compilation, allocator
    rounds = _rounds(device, shape, backend)
    if device == "cuda":
        # pytest-benchmark's figure on CUDA: the host-inclusive wall time, from an idle GPU with L2 flushed
        def setup():
            flush_l2(device)
            torch.cuda.synchronize()

        benchmark.pedantic(step, setup=setup, rounds=rounds, iterations=1, warmup_rounds=1)
    else:
        benchmark.pedantic(step, rounds=rounds, iterations=1)

    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: ran once, nothing to record
        return
    wall = stats.stats.median
    # the figure compared: on CUDA the kernel time (CUDA events, L2 flushed), on the CPU the wall time
    seconds = _kernel_seconds(op, backend, inputs, mode, rounds) if device == "cuda" else wall
    key = (device, op, shape, dtype, mode)
    if backend == "eager":
        eager_medians[key] = seconds
    elif key not in eager_medians:  # eager deselected (-k): measure it here, untimed by pytest-benchmark
        eager_medians[key] = (
            _kernel_seconds(op, "eager", inputs, mode, rounds)
            if device == "cuda"
            else median_seconds(make_step(op, "eager", inputs, mode), rounds)
        )
    nbytes = min_bytes(op, SHAPES[shape], dtype, mode)
    benchmark.extra_info.update(
        {
            "device": device,
            "op": op,
            "shape": list(SHAPES[shape]),
            "dtype": _dtype_name(dtype),
            "mode": mode,
            "backend": backend,
            "min_bytes": nbytes,
            "gbps": nbytes / seconds / 1e9,
            "speedup": eager_medians[key] / seconds,
        }
    )
    if device == "cuda":
        copy_gbps = copy_bandwidth_gbps(device)
        floor = floor_seconds(nbytes, copy_gbps)
        benchmark.extra_info.update(
            {
                "kernel_us": seconds * 1e6,
                "wall_us": wall * 1e6,
                "copy_gbps": copy_gbps,
                "floor_us": floor * 1e6,
                "floor_pct": 100 * floor / seconds,
            }
        )


def _kernel_seconds(op, backend, inputs, mode, rounds):
    """Median CUDA-event time of the op's kernels (bench_utils.cuda_times, L2 flushed before each call)."""
    kernel, _ = cuda_times(make_step(op, backend, inputs, mode, synchronize=False), rounds, "cuda", wall=False)
    return median(kernel)
