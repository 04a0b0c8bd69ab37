"""affine_hpool's two CPU paths, forward + backward, as a training step sees them: the general op and the
separable one (rotation_free=True), eager and native interleaved in one process, in three memory
situations, each thread count in its own subprocess.

    python benchmarks/cpu_affine_paths.py [--shape 32 2048 24 8] [--threads 1 2] [--rounds 7] [--burst 3]
                                          [--output-cache-mb MB] [--json PATH]

Inputs (the step is always out = op(x, theta); autograd.grad(out, (x, theta), g)):
  reused  the same leaf x every step (x.detach().requires_grad_() made once): a quiet process.
  fresh   x.clone().requires_grad_() every step, the clone timed with the step (a backbone's output is
          fresh memory every training step). Compare with `clone` alone: x.clone() of the same 50 MB.
  churn   the reused leaf, but before every step (untimed) a 50 MB tensor is cloned and freed, as the
          other layers of a training step allocate and free theirs.
Every round runs each case as a burst of --burst calls (the first untimed), cases in a fixed interleaved
order, after one untimed warm-up round; each case's figures are medians over its timed calls. Per call
the process CPU time (all threads), minor page faults and the time its threads waited for a CPU
(run-queue wait, /proc/self/task/*/schedstat: the share of the wall time that other load took) are kept
beside the wall time, and per case the system-wide transparent-huge-page and compaction counters of
/proc/vmstat.

Goals checked (separable native, per thread count): fresh <= clone + 1.25 x reused; churn <= 1.25 x
reused; eager / native >= 6 in the churning loop; and two threads >= 1.5 x faster than one (churn).

Idleness: the load average before and after, and the CPU time that OTHER processes used during the run
(busy jiffies of /proc/stat minus this process tree's own CPU time); a warning is printed when others used
more than 5% of a core, since then the wall times are not those of an idle machine.

The memory floor is the op's minimum traffic (bench_utils.min_bytes) at the bandwidth of a 256 MiB copy_
measured in the same process (bench_utils.copy_bandwidth_gbps); % of floor = floor time / native time.
--output-cache-mb sets SCSTN_VCN_CPU_OUTPUT_CACHE_MB for the subprocesses (0: the native kernels' outputs
come from torch's allocator instead of their reuse cache).
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
PATHS = (("affine_hpool", "general"), ("affine_hpool_separable", "separable"))
BACKENDS = ("eager", "native")
INPUTS = ("reused", "fresh", "churn")
VMSTAT_KEYS = ("thp_fault_alloc", "thp_fault_fallback", "compact_stall", "compact_fail", "pgfault")
REPORTED_KIB = pathlib.Path("/sys/module/page_reporting/parameters/reported_kib")
OTHERS_WARN_CORES = 0.05
GOAL_FRESH, GOAL_CHURN, GOAL_SPEEDUP, GOAL_THREADS = 1.25, 1.25, 6.0, 1.5


# --- measuring one process (the worker) ---------------------------------------------------------------


def read_vmstat():
    """The /proc/vmstat counters of VMSTAT_KEYS, and the KiB of free memory reported to the hypervisor
    (free page reporting; absent on most machines)."""
    counters = dict.fromkeys(VMSTAT_KEYS, 0)
    try:
        with open("/proc/vmstat") as handle:
            for line in handle:
                key, value = line.split()
                if key in counters:
                    counters[key] = int(value)
    except OSError:
        pass
    try:
        counters["reported_kib"] = int(REPORTED_KIB.read_text())
    except (OSError, ValueError):
        pass
    return counters


def runqueue_wait_ms():
    """Milliseconds this process's threads have waited, runnable, for a CPU (Linux schedstat; 0 elsewhere)."""
    total = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as handle:
                total += int(handle.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e6


def snapshot():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime, usage.ru_minflt, runqueue_wait_ms()


def make_cases(shape):
    """[(name, prepare, timed)]: prepare() runs untimed before each call, timed() is the measured call."""
    import torch
    from bench_utils import make_inputs, op_function

    cases = []
    x = None
    for op, path in PATHS:
        x, theta = make_inputs(op, shape, torch.float32, "cpu")
        leaf_theta = theta.detach().requires_grad_()
        leaf_x = x.detach().requires_grad_()
        upstream = torch.randn(shape[:3], generator=torch.Generator().manual_seed(1))
        for backend in BACKENDS:
            fn = op_function(op, backend)

            def step(xs, fn=fn, leaf_theta=leaf_theta, upstream=upstream):
                torch.autograd.grad(fn(xs, leaf_theta), (xs, leaf_theta), upstream)

            def reused(step=step, leaf_x=leaf_x):
                step(leaf_x)

            def fresh(step=step, x=x):
                step(x.clone().requires_grad_())

            def churn_memory(x=x):
                junk = x.clone()
                del junk

            cases.append((f"{path} {backend} reused", None, reused))
            cases.append((f"{path} {backend} fresh", None, fresh))
            cases.append((f"{path} {backend} churn", churn_memory, reused))

    def clone(x=x):
        x.clone()

    cases.insert(0, ("clone", None, clone))
    return cases


def run_worker(shape, rounds, burst):
    import torch
    from bench_utils import copy_bandwidth_gbps, min_bytes

    from scstn_vcn import ops

    ok, why = ops.backend_status("native", "cpu")
    if not ok:
        raise SystemExit(f"the native CPU backend is needed: {why}")
    gbps = copy_bandwidth_gbps("cpu")
    cases = make_cases(shape)
    samples = {name: [] for name, _, _ in cases}
    counters = {name: dict.fromkeys((*VMSTAT_KEYS, "reported_kib"), 0) for name, _, _ in cases}
    for round_index in range(rounds + 1):  # round 0: warm-up
        for name, prepare, timed in cases:
            vm_before = read_vmstat()
            for call in range(burst):
                if prepare is not None:
                    prepare()
                before = snapshot()
                timed()
                after = snapshot()
                if round_index > 0 and call > 0:
                    wall, cpu, faults, waited = (b - a for a, b in zip(before, after, strict=True))
                    samples[name].append(
                        {"wall_ms": wall * 1e3, "cpu_ms": cpu * 1e3, "minflt": faults, "runqueue_wait_ms": waited}
                    )
            if round_index > 0:
                vm_after = read_vmstat()
                for key in vm_after:
                    counters[name][key] += vm_after[key] - vm_before.get(key, 0)
    results = {}
    for name, rows in samples.items():
        calls = len(rows)
        results[name] = {
            "wall_ms": statistics.median(r["wall_ms"] for r in rows),
            "wall_min_ms": min(r["wall_ms"] for r in rows),
            "wall_max_ms": max(r["wall_ms"] for r in rows),
            "cpu_ms": statistics.median(r["cpu_ms"] for r in rows),
            "minflt": statistics.median(r["minflt"] for r in rows),
            "runqueue_wait_ms": statistics.median(r["runqueue_wait_ms"] for r in rows),
            "timed_calls": calls,
            # per call of the whole burst (untimed calls included), system-wide
            "vmstat_per_call": {k: v / (rounds * burst) for k, v in counters[name].items()},
            "samples": rows,
        }
    nbytes = min_bytes("affine_hpool", shape, torch.float32, "fwdbwd")
    return {
        "threads": torch.get_num_threads(),
        "copy_gbps": gbps,
        "min_bytes": nbytes,
        "floor_ms": nbytes / (gbps * 1e9) * 1e3,
        "cases": results,
    }


# --- the parent: one worker per thread count, idleness, goals, table, JSON --------------------------------


def busy_seconds():
    """CPU seconds all CPUs spent busy since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_seconds():
    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_usage.ru_utime + self_usage.ru_stime + children.ru_utime + children.ru_stime


def run_subprocess(threads, args):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if args.output_cache_mb is not None:
        env["SCSTN_VCN_CPU_OUTPUT_CACHE_MB"] = str(args.output_cache_mb)
    command = [
        sys.executable,
        str(pathlib.Path(__file__).resolve()),
        "--worker",
        str(threads),
        "--shape",
        *map(str, args.shape),
        "--rounds",
        str(args.rounds),
        "--burst",
        str(args.burst),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {threads}-thread worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def goals(by_threads):
    """The issue's goals for the separable native step, per thread count and across thread counts."""
    checks = []
    for threads, result in by_threads.items():
        cases = result["cases"]
        reused = cases["separable native reused"]["wall_ms"]
        fresh = cases["separable native fresh"]["wall_ms"]
        churn = cases["separable native churn"]["wall_ms"]
        clone = cases["clone"]["wall_ms"]
        eager = cases["separable eager churn"]["wall_ms"]
        checks.append(
            {
                "threads": threads,
                "goal": f"fresh <= clone + {GOAL_FRESH} x reused",
                "value": (fresh - clone) / reused,
                "limit": GOAL_FRESH,
                "met": fresh - clone <= GOAL_FRESH * reused,
                "detail": f"fresh {fresh:.1f} ms, clone {clone:.1f} ms, reused {reused:.1f} ms",
            }
        )
        checks.append(
            {
                "threads": threads,
                "goal": f"churn <= {GOAL_CHURN} x reused",
                "value": churn / reused,
                "limit": GOAL_CHURN,
                "met": churn <= GOAL_CHURN * reused,
                "detail": f"churn {churn:.1f} ms, reused {reused:.1f} ms",
            }
        )
        checks.append(
            {
                "threads": threads,
                "goal": f"eager / native >= {GOAL_SPEEDUP} (churn)",
                "value": eager / churn,
                "limit": GOAL_SPEEDUP,
                "met": eager >= GOAL_SPEEDUP * churn,
                "detail": f"eager {eager:.1f} ms, native {churn:.1f} ms",
            }
        )
    if 1 in by_threads and 2 in by_threads:
        one = by_threads[1]["cases"]["separable native churn"]["wall_ms"]
        two = by_threads[2]["cases"]["separable native churn"]["wall_ms"]
        checks.append(
            {
                "threads": "1 vs 2",
                "goal": f"2 threads >= {GOAL_THREADS} x faster than 1 (churn)",
                "value": one / two,
                "limit": GOAL_THREADS,
                "met": one >= GOAL_THREADS * two,
                "detail": f"1 thread {one:.1f} ms, 2 threads {two:.1f} ms",
            }
        )
    return checks


def machine():
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as handle:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    for name in ("enabled", "defrag"):
        try:
            info[f"thp_{name}"] = pathlib.Path(f"/sys/kernel/mm/transparent_hugepage/{name}").read_text().strip()
        except OSError:
            pass
    return info


def print_report(document):
    shape = tuple(document["shape"])
    print(
        f"affine_hpool CPU paths, shape {shape} float32, forward + backward; medians of "
        f"{document['rounds']} rounds x {document['burst'] - 1} timed calls, interleaved"
    )
    for threads, result in document["by_threads"].items():
        cases = result["cases"]
        print(
            f"\n{threads} thread(s): copy {result['copy_gbps']:.1f} GB/s, minimum traffic "
            f"{result['min_bytes'] / 1e6:.1f} MB, floor {result['floor_ms']:.2f} ms"
        )
        print(
            f"  {'case':28s} {'wall ms':>8s} {'min':>7s} {'cpu ms':>7s} {'waited':>7s} {'faults':>7s} "
            f"{'thp/call':>8s} {'vs eager':>8s} {'% floor':>7s}"
        )
        for name, row in cases.items():
            extra = ""
            if " native " in name:
                eager = cases[name.replace(" native ", " eager ")]["wall_ms"]
                extra = f" {eager / row['wall_ms']:7.2f}x"
                if name.endswith("reused"):
                    extra += f" {100 * result['floor_ms'] / row['wall_ms']:6.1f}%"
            print(
                f"  {name:28s} {row['wall_ms']:8.1f} {row['wall_min_ms']:7.1f} {row['cpu_ms']:7.1f} "
                f"{row['runqueue_wait_ms']:7.1f} {row['minflt']:7.0f} "
                f"{row['vmstat_per_call'].get('thp_fault_alloc', 0):8.1f}{extra}"
            )
    print("\ngoals (separable native, wall medians):")
    for check in document["goals"]:
        print(
            f"  [{'met' if check['met'] else 'NOT met'}] {check['threads']} thread(s): {check['goal']}: "
            f"{check['value']:.2f} ({check['detail']})"
        )
    idle = document["idleness"]
    print(
        f"\nload average before {idle['loadavg_before']}, after {idle['loadavg_after']}; other processes used "
        f"{idle['others_cpu_s']:.1f} CPU s in {idle['wall_s']:.1f} s ({idle['others_cores']:.2f} of a core)"
    )
    if idle["others_cores"] > OTHERS_WARN_CORES:
        print(
            f"WARNING: the machine was not idle (others used {idle['others_cores']:.2f} of a core > "
            f"{OTHERS_WARN_CORES}); the wall times include their load ('waited' shows how much). Re-run on an idle "
            "machine for figures to publish."
        )


def write_json_atomic(path, document):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as handle:
        json.dump(document, handle, indent=1)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawTextHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    parser.add_argument("--shape", type=int, nargs=4, default=(32, 2048, 24, 8), metavar=("B", "C", "H", "W"))
    parser.add_argument("--threads", type=int, nargs="+", default=(1, 2), help="thread counts, one subprocess each")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds after the warm-up round")
    parser.add_argument("--burst", type=int, default=3, help="calls of a case in a row per round, the first untimed")
    parser.add_argument("--output-cache-mb", type=int, help="SCSTN_VCN_CPU_OUTPUT_CACHE_MB for the workers")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results to this file")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.burst < 2:
        parser.error(f"--burst must be >= 2 (the first call of a burst is not timed), got {args.burst}")
    if any(t < 1 for t in args.threads):
        parser.error(f"--threads must be >= 1 each, got {args.threads}")
    if any(s < 1 for s in args.shape):
        parser.error(f"--shape must be positive, got {args.shape}")
    if args.output_cache_mb is not None and args.output_cache_mb < 0:
        parser.error(f"--output-cache-mb must be >= 0, got {args.output_cache_mb}")
    sys.path.insert(0, str(HERE))
    if args.worker is not None:
        import torch

        torch.set_num_threads(args.worker)
        print(json.dumps(run_worker(tuple(args.shape), args.rounds, args.burst)))
        return

    load_before, busy_before, own_before, start = os.getloadavg(), busy_seconds(), own_seconds(), time.perf_counter()
    by_threads = {threads: run_subprocess(threads, args) for threads in args.threads}
    wall = time.perf_counter() - start
    others = max(0.0, (busy_seconds() - busy_before) - (own_seconds() - own_before))
    import torch

    document = {
        "command": " ".join([pathlib.Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "shape": list(args.shape),
        "rounds": args.rounds,
        "burst": args.burst,
        "output_cache_mb": args.output_cache_mb
        if args.output_cache_mb is not None
        else os.environ.get("SCSTN_VCN_CPU_OUTPUT_CACHE_MB", "default"),
        "torch": torch.__version__,
        "machine": machine(),
        "idleness": {
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
            "wall_s": wall,
            "others_cpu_s": others,
            "others_cores": others / wall,
            "idle": others / wall <= OTHERS_WARN_CORES,
        },
        "by_threads": by_threads,
    }
    document["goals"] = goals(by_threads)
    print_report(document)
    if args.json is not None:
        write_json_atomic(args.json, document)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
