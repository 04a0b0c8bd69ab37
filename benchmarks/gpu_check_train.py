"""The training-step timer of benchmarks/gpu_check.sh: one step (forward, Eq. 8 loss, backward, Adam) of
the R50-O model, with the eager ops and with each fused backend (what `scstn-vcn train --fused` runs:
triton, or native with --kernels native), built as benchmarks/test_train_step.py builds it.

Each backend gets a fresh model from the same seed, warm-up steps (lazy initialisation, kernel
compilation), then `--rounds` timed steps, each synchronised; the median step time, images/s, the
speed-up over eager in this run and the peak GPU memory go to a JSON list.

    python benchmarks/gpu_check_train.py --device cuda --json train.json
    python benchmarks/gpu_check_train.py --device cpu --backbone tiny --size 64x32 --P 2 --K 2 --amp off \
        --backends eager,native --rounds 2 --json train.json
"""

import argparse
import sys
import time
import traceback

import torch
from bench_utils import median, write_json

from scstn_vcn import ops
from scstn_vcn.engine.features import autocast_context
from scstn_vcn.engine.optim import build_optimizer
from scstn_vcn.losses import ReIDLoss
from scstn_vcn.models import build_model

OPTIM = {"lr": 5e-4, "weight_decay": 5e-4, "betas": [0.9, 0.999]}
NUM_CLASSES = 64
WARMUP_STEPS = 2


def _size(text):
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 384x128, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"expected positive HEIGHTxWIDTH, got {text!r}")
    return height, width


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=_size, default=(384, 128), help="input HEIGHTxWIDTH (384x128)")
    parser.add_argument("--P", type=int, default=16, help="identities per batch")
    parser.add_argument("--K", type=int, default=6, help="images per identity")
    parser.add_argument("--amp", choices=("bf16", "fp16", "off"), default="bf16")
    parser.add_argument("--backends", default="eager,triton,native", help="comma-separated; eager first")
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per backend")
    parser.add_argument("--json", required=True)
    parser.add_argument("--deadline", type=float, default=None, help="Unix time after which no backend starts")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in args.backends if b not in ops.BACKENDS]
    if bad or not args.backends:
        parser.error(f"--backends must list some of {', '.join(ops.BACKENDS)}, got {bad or args.backends}")
    if args.rounds < 1 or args.P < 2 or args.K < 2:
        parser.error("--rounds must be >= 1 and --P, --K >= 2 (the ranked list loss needs positives and negatives)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    return args


def time_backend(args, backend):
    """(step seconds, peak GPU MiB or None) of `backend`."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(NUM_CLASSES, backbone=args.backbone, variant="O", input_size=args.size).to(device)
    loss_fn = ReIDLoss(NUM_CLASSES).to(device)
    optimizer = build_optimizer(model, OPTIM)
    images = torch.randn(args.P * args.K, 3, *args.size, device=device)
    labels = torch.arange(args.P, device=device).repeat_interleave(args.K)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        with autocast_context(device, args.amp):
            total, _ = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        sync()
        return total

    model.train()
    with ops.use_backend(backend):
        for _ in range(WARMUP_STEPS):
            step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            total = step()
            times.append(time.perf_counter() - start)
    if not torch.isfinite(total):
        raise FloatingPointError(f"the loss is {total.item()} with backend {backend!r}")
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return times, peak


def main(argv=None):
    args = parse_args(argv)
    batch = args.P * args.K
    config = {
        "device": args.device,
        "backbone": args.backbone,
        "variant": "O",
        "input": list(args.size),
        "batch": batch,
        "amp": args.amp,
        "rounds": args.rounds,
    }
    results, failures = [], []
    eager = None
    for backend in args.backends:
        if args.deadline is not None and time.time() > args.deadline:
            failures.append({"backend": backend, "error": "not run: out of time (the run's deadline)"})
            continue
        ok, why = ops.backend_status(backend, args.device)
        if not ok:
            failures.append({"backend": backend, "error": f"unavailable on {args.device}: {why}"})
            print(f"train step {backend}: UNAVAILABLE: {why}", flush=True)
            continue
        try:
            times, peak = time_backend(args, backend)
        except Exception as error:  # record, go on with the next backend
            traceback.print_exc()
            failures.append({"backend": backend, "error": f"{type(error).__name__}: {error}"[:2000]})
            print(f"train step {backend}: FAILED: {type(error).__name__}: {error}", flush=True)
            continue
        finally:
            if args.device == "cuda":
                torch.cuda.empty_cache()
        step_s = median(times)
        if backend == "eager":
            eager = step_s
        result = dict(
            config,
            backend=backend,
            step_ms=step_s * 1e3,
            images_per_s=batch / step_s,
            speedup_vs_eager=None if eager is None else eager / step_s,
            peak_memory_mib=peak,
            step_times_s=times,
        )
        results.append(result)
        speedup = "" if result["speedup_vs_eager"] is None else f", {result['speedup_vs_eager']:.3f}x eager"
        print(f"train step {backend}: {step_s * 1e3:.1f} ms, {batch / step_s:.1f} images/s{speedup}", flush=True)
    write_json(args.json, {"config": config, "results": results, "failures": failures})
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
