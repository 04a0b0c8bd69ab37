"""affine_hpool's two CPU paths side by side, measured in one run: the general op and the separable
(rotation_free=True) op, each eager and native, forward + backward, and the memory floor from a copy
measured in the same process.

    python benchmarks/cpu_affine_paths.py [--shape 32 2048 24 8] [--rounds 9] [--json PATH]

The floor is the op's minimum traffic (bench_utils.min_bytes) at the bandwidth of a 256 MiB copy_
(bench_utils.copy_bandwidth_gbps); % of floor = floor time / native time.
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench_utils import copy_bandwidth_gbps, make_inputs, make_step, median_seconds, min_bytes  # noqa: E402

PATHS = (("affine_hpool", "general"), ("affine_hpool_separable", "rotation_free=True"))


def measure(shape, rounds):
    gbps = copy_bandwidth_gbps("cpu")
    nbytes = min_bytes("affine_hpool", shape, torch.float32, "fwdbwd")
    floor = nbytes / (gbps * 1e9)
    rows = []
    for op, label in PATHS:
        inputs = make_inputs(op, shape, torch.float32, "cpu")
        eager = median_seconds(make_step(op, "eager", inputs, "fwdbwd"), rounds)
        native = median_seconds(make_step(op, "native", inputs, "fwdbwd"), rounds)
        rows.append({"op": op, "path": label, "eager_ms": eager * 1e3, "native_ms": native * 1e3,
                     "speedup": eager / native, "floor_pct": 100 * floor / native})
    return {"shape": list(shape), "threads": torch.get_num_threads(), "copy_gbps": gbps, "min_bytes": nbytes,
            "floor_ms": floor * 1e3, "rows": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=(32, 2048, 24, 8), metavar=("B", "C", "H", "W"))
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds per case (median)")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    from scstn_vcn import ops

    ok, why = ops.backend_status("native", "cpu")
    if not ok:
        sys.exit(f"the native CPU backend is needed: {why}")
    result = measure(tuple(args.shape), args.rounds)
    print(f"shape {tuple(result['shape'])} float32 fwd+bwd, {result['threads']} threads; copy {result['copy_gbps']:.1f} GB/s, "
          f"minimum traffic {result['min_bytes'] / 1e6:.1f} MB, floor {result['floor_ms']:.2f} ms")
    for row in result["rows"]:
        print(f"  {row['path']:20s} eager {row['eager_ms']:8.1f} ms  native {row['native_ms']:7.2f} ms  "
              f"speed-up {row['speedup']:5.2f}x  {row['floor_pct']:4.1f}% of floor")
    if args.json is not None:
        # atomic: a temporary file in the target folder, renamed over the target
        args.json.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=args.json.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(result, handle, indent=2)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
