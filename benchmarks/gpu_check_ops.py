"""The op benchmarks of benchmarks/gpu_check.sh: every op of bench_utils.OPS, forward and forward+backward,
for eager, torch.compile of eager, triton and native, written as a pytest-benchmark JSON.

Per case (op, shape, dtype, mode, backend) the JSON entry's extra_info holds device, op, shape, dtype,
mode, backend, min_bytes, kernel_us and wall_us (medians; on CUDA from bench_utils.cuda_times: CUDA-event
kernel time and host-inclusive wall time, L2 flushed before every call; on the CPU both are the
perf_counter time), floor_us (min_bytes at the measured copy bandwidth), floor_pct (floor / kernel time),
gbps (min_bytes / kernel time), speedup (= speedup_vs_eager) and speedup_vs_compile, both on kernel time
and measured in this run. The entry's "stats" are the kernel times. A top-level "gpu_check" key lists
the copy bandwidth, the floors, and every case that failed or was not run.

    python benchmarks/gpu_check_ops.py --device cuda --json ops.json
    python benchmarks/gpu_check_ops.py --device cpu --shapes tiny --dtypes float32 \
        --backends eager,compile,native --reps 5 --json ops.json

--precompile only builds and warms up the compiled backends (torch.compile, triton): run beside other
work, it fills the inductor and Triton caches so that the timed run later spends no time compiling.
"""

import argparse
import datetime
import sys
import time
import traceback

import torch
from bench_utils import (
    OPS,
    copy_bandwidth_gbps,
    cuda_times,
    floor_seconds,
    make_inputs,
    make_step,
    median,
    min_bytes,
    write_json,
)

from scstn_vcn import ops

SHAPES = {
    "O96": (96, 2048, 24, 8),
    "M96": (96, 2048, 48, 16),
    "tiny": (2, 16, 6, 4),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = ("fwd", "fwdbwd")
BACKENDS = ("eager", "compile", "triton", "native")  # the baselines first: speed-ups need them
WARMUP_CALLS = 2
DEADLINE_MARGIN_S = 20  # no new case starts when less than this is left (a case at (M) takes seconds)


def _csv(choices):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices)}; got {text!r}")
        return items

    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True)
    parser.add_argument("--ops", type=_csv(OPS), default=list(OPS))
    parser.add_argument("--shapes", type=_csv(tuple(SHAPES)), default=["O96", "M96"])
    parser.add_argument("--dtypes", type=_csv(tuple(DTYPES)), default=["float32", "bfloat16"])
    parser.add_argument("--modes", type=_csv(MODES), default=list(MODES))
    parser.add_argument("--backends", type=_csv(BACKENDS), default=list(BACKENDS))
    parser.add_argument("--reps", type=int, default=50, help="timed calls per case (after warm-up)")
    parser.add_argument("--json", help="where to write the pytest-benchmark JSON (required unless --precompile)")
    parser.add_argument("--deadline", type=float, default=None, help="Unix time after which no case starts")
    parser.add_argument("--precompile", action="store_true", help="compile and warm up only; time nothing")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error(f"--reps must be at least 1, got {args.reps}")
    if not args.precompile and not args.json:
        parser.error("--json PATH is required (unless --precompile)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    args.backends = [b for b in BACKENDS if b in args.backends]
    if args.precompile:
        args.backends = [b for b in args.backends if b in ("compile", "triton")]
    return args


def _unavailable(backend, device):
    """Why `backend` cannot run on `device`, or None."""
    if backend == "compile":
        if device == "cuda" and "triton" not in ops.available_backends("cuda"):
            return "torch.compile's inductor needs Triton on CUDA, which is not available"
        return None
    ok, why = ops.backend_status(backend, device)
    return None if ok else why


def _allow_recompiles():
    """Each case compiles its own graph (new shape, dtype or grad mode): lift dynamo's recompile limit
    so that no case silently falls back to eager, and start each compile case from a clean cache."""
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)


def _time_case(step, device, reps):
    if device == "cuda":
        return cuda_times(step, reps, device)
    wall = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        wall.append(time.perf_counter() - start)
    return wall, wall


def _entry(device, op, shape, dtype_name, mode, backend, kernel, wall, baselines, copy_gbps, stats_cls):
    nbytes = min_bytes(op, SHAPES[shape], DTYPES[dtype_name], mode)
    kernel_s, wall_s = median(kernel), median(wall)
    floor_s = floor_seconds(nbytes, copy_gbps)
    group = f"{device}-{op}-{shape}-{dtype_name}-{mode}"
    param = f"{group}-{backend}"
    stats = stats_cls()
    for t in kernel:
        stats.update(t)
    stats_dict = stats.as_dict()
    stats_dict["data"] = list(kernel)
    stats_dict["iterations"] = 1

    def speedup(base):
        return None if base is None else base / kernel_s

    return {
        "group": group,
        "name": f"gpu_check_ops[{param}]",
        "fullname": f"benchmarks/gpu_check_ops.py::gpu_check_ops[{param}]",
        "params": {"device": device, "op": op, "shape": shape, "dtype": dtype_name, "mode": mode, "backend": backend},
        "param": param,
        "extra_info": {
            "device": device,
            "op": op,
            "shape": list(SHAPES[shape]),
            "shape_name": shape,
            "dtype": dtype_name,
            "mode": mode,
            "backend": backend,
            "min_bytes": nbytes,
            "kernel_us": kernel_s * 1e6,
            "wall_us": wall_s * 1e6,
            "gbps": nbytes / kernel_s / 1e9,
            "copy_gbps": copy_gbps,
            "floor_us": floor_s * 1e6,
            "floor_pct": 100.0 * floor_s / kernel_s,
            "speedup": speedup(baselines.get("eager")),
            "speedup_vs_eager": speedup(baselines.get("eager")),
            "speedup_vs_compile": speedup(baselines.get("compile")),
            "wall_speedup_vs_eager": None if "eager_wall" not in baselines else baselines["eager_wall"] / wall_s,
            "timing": "cuda events, L2 flushed" if device == "cuda" else "perf_counter",
        },
        "options": {
            "disable_gc": False,
            "timer": "torch.cuda.Event" if device == "cuda" else "perf_counter",
            "min_rounds": len(kernel),
            "max_time": None,
            "min_time": None,
            "precision": None,
            "confidence": None,
            "warmup": True,
        },
        "stats": stats_dict,
    }


def _machine_info(device, copy_gbps):
    from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info

    info = pytest_benchmark_generate_machine_info()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info.update(
        torch_version=torch.__version__,
        triton_version=triton_version,
        cuda_runtime=torch.version.cuda,
        gpu=torch.cuda.get_device_name(0) if device == "cuda" else None,
        cpu_threads=torch.get_num_threads(),
        copy_gbps=copy_gbps,
        date_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    return info


def run(args):
    from pytest_benchmark import __version__ as pb_version
    from pytest_benchmark.stats import Stats
    from pytest_benchmark.utils import get_commit_info

    _allow_recompiles()
    device = args.device
    copy_gbps = None if args.precompile else copy_bandwidth_gbps(device)
    if copy_gbps is not None:
        print(f"copy bandwidth ({device}): {copy_gbps:.1f} GB/s", flush=True)
    entries, failures, not_run, floors = [], [], [], []
    document = None
    if not args.precompile:
        document = {
            "machine_info": _machine_info(device, copy_gbps),
            "commit_info": get_commit_info(),
            "benchmarks": entries,
            "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "version": pb_version,
            "gpu_check": {
                "device": device,
                "copy_gbps": copy_gbps,
                "reps": args.reps,
                "floors": floors,
                "failures": failures,
                "not_run": not_run,
            },
        }
    # shape and dtype outermost: when time runs short, every op has been measured at the first ones
    for shape in args.shapes:
        for dtype_name in args.dtypes:
            for op in args.ops:
                inputs = None
                for mode in args.modes:
                    group = f"{device}-{op}-{shape}-{dtype_name}-{mode}"
                    if not args.precompile:
                        nbytes = min_bytes(op, SHAPES[shape], DTYPES[dtype_name], mode)
                        floor_us = floor_seconds(nbytes, copy_gbps) * 1e6
                        floors.append({"group": group, "min_bytes": nbytes, "floor_us": floor_us})
                        print(
                            f"{group}: floor {nbytes / 1e6:.1f} MB = {floor_us:.1f} us at {copy_gbps:.0f} GB/s",
                            flush=True,
                        )
                    baselines, timed = {}, []
                    for backend in args.backends:
                        case = f"{group}-{backend}"
                        if args.deadline is not None and time.time() + DEADLINE_MARGIN_S > args.deadline:
                            not_run.append({"case": case, "reason": "out of time (the run's deadline)"})
                            continue
                        why = _unavailable(backend, device)
                        if why:
                            failures.append(
                                {"case": case, "error": f"backend {backend!r} unavailable on {device}: {why}"}
                            )
                            print(f"{case}: UNAVAILABLE: {why}", flush=True)
                            continue
                        try:
                            if inputs is None:
                                inputs = make_inputs(op, SHAPES[shape], DTYPES[dtype_name], device)
                            if backend == "compile":
                                torch._dynamo.reset()
                            step = make_step(op, backend, inputs, mode, synchronize=device == "cpu")
                            for _ in range(WARMUP_CALLS):
                                step()
                            if device == "cuda":
                                torch.cuda.synchronize()
                            if args.precompile:
                                print(f"{case}: compiled", flush=True)
                                continue
                            kernel, wall = _time_case(step, device, args.reps)
                        except Exception as error:  # record, go on with the next case
                            traceback.print_exc()
                            failures.append({"case": case, "error": f"{type(error).__name__}: {error}"[:2000]})
                            print(f"{case}: FAILED: {type(error).__name__}: {error}", flush=True)
                            continue
                        finally:
                            step = None
                        if backend in ("eager", "compile"):
                            baselines[backend] = median(kernel)
                        if backend == "eager":
                            baselines["eager_wall"] = median(wall)
                        timed.append((backend, kernel, wall))
                    for backend, kernel, wall in timed:
                        entry = _entry(
                            device, op, shape, dtype_name, mode, backend, kernel, wall, baselines, copy_gbps, Stats
                        )
                        entries.append(entry)
                        info = entry["extra_info"]
                        fmt = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
                        print(
                            f"{group}-{backend}: kernel {info['kernel_us']:.1f} us, wall {info['wall_us']:.1f} us, "
                            f"{info['gbps']:.0f} GB/s, {info['floor_pct']:.0f}% of floor, "
                            f"{fmt(info['speedup_vs_eager'])} eager, {fmt(info['speedup_vs_compile'])} compile",
                            flush=True,
                        )
                    if document is not None:
                        write_json(args.json, document)
                inputs = None
                if device == "cuda":
                    torch.cuda.empty_cache()
    if document is not None:
        write_json(args.json, document)
    for failure in failures:
        print(f"FAILED {failure['case']}: {failure['error']}", flush=True)
    for item in not_run:
        print(f"NOT RUN {item['case']}: {item['reason']}", flush=True)
    return 1 if failures or not_run else 0


def main(argv=None):
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
