"""What benchmarks/gpu_check.sh runs on: versions, the GPU, the backends that load, and the measured
device-to-device copy bandwidth (the basis of every op's memory floor).

    python benchmarks/gpu_check_env.py --probe            # prints the GPU's name; exit 3 when there is no CUDA device
    python benchmarks/gpu_check_env.py --device cuda --json env.json
"""

import argparse
import datetime
import json
import os
import platform
import sys

NO_CUDA_EXIT = 3


def probe():
    """Print the name of CUDA device 0, or say why there is none (exit 3). Imports nothing of the project,
    so it answers before anything is built."""
    try:
        import torch
    except ImportError as error:
        print(f"no CUDA device: {sys.executable} cannot import torch ({error})")
        return NO_CUDA_EXIT
    if not torch.cuda.is_available():
        why = "torch is a CPU-only build" if torch.version.cuda is None else "torch.cuda.is_available() is False"
        print(f"no CUDA device: {why} (torch {torch.__version__})")
        return NO_CUDA_EXIT
    major, minor = torch.cuda.get_device_capability(0)
    print(f"{torch.cuda.get_device_name(0)}\t{major}.{minor}")
    return 0


def describe(device):
    import torch
    from bench_utils import copy_bandwidth_gbps

    from scstn_vcn import ops

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        import setuptools

        setuptools_version = setuptools.__version__
    except ImportError:
        setuptools_version = None
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda_runtime": torch.version.cuda,
        "setuptools": setuptools_version,
        "device": device,
        "gpu": None,
        "capability": None,
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=props.total_memory / 2**30,
            sm_count=props.multi_processor_count,
            l2_cache_mib=(getattr(props, "L2_cache_size", 0) or 0) / 2**20,
        )
    ok, why = ops.load_native()
    info["native_import"] = "ok" if ok else why
    if ok:
        import scstn_vcn._C as extension

        info["native_with_cuda"] = bool(getattr(extension, "WITH_CUDA", False))
    else:
        info["native_with_cuda"] = None
    info["backends"] = {name: dict(zip(("ok", "why"), ops.backend_status(name, device))) for name in ops.BACKENDS}
    info["copy_gbps"] = copy_bandwidth_gbps(device)
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probe", action="store_true", help="only name the CUDA device (exit 3 without one)")
    parser.add_argument("--device", choices=("cuda", "cpu"))
    parser.add_argument("--json", help="where to write what was found")
    args = parser.parse_args(argv)
    if args.probe:
        return probe()
    if not args.device or not args.json:
        parser.error("--device and --json are required (or --probe)")
    info = describe(args.device)
    for key in ("python", "torch", "triton", "cuda_runtime", "setuptools", "gpu", "capability", "native_with_cuda"):
        print(f"{key:>18}: {info[key]}")
    for name, status in info["backends"].items():
        print(f"{'backend ' + name:>18}: {'available' if status['ok'] else 'UNAVAILABLE: ' + status['why']}")
    print(
        f"{'copy bandwidth':>18}: {info['copy_gbps']:.1f} GB/s ({args.device}, bytes read + written per second)",
        flush=True,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    tmp = f"{args.json}.tmp{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(info, handle, indent=1)
    os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
