#!/usr/bin/env bash
# One command that proves the GPU side of scstn-vcn, from the repository root of a machine with a CUDA GPU
# and torch + triton installed (nothing is fetched):
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--quick] [--smoke]
#
#  1. builds the extension in place for this GPU's architecture only (an editable install, offline) and
#     prints torch, triton, CUDA, the GPU and the measured device-to-device copy bandwidth;
#  2. runs every test that skips without a GPU (the cuda-marked and Triton kernel tests, the cuda cases of
#     the op tests) and compute-sanitizer (memcheck, racecheck, initcheck, where installed) over each
#     native CUDA op, forward and backward, at small odd shapes;
#  3. benchmarks every op forward and forward+backward at the paper shapes (O) and (M), float32 and
#     bfloat16, for eager, torch.compile, triton and native (benchmarks/gpu_check_ops.py);
#  4. times a training step of R50-O (384x128, batch 96, bf16) eager vs --fused, and evaluation at MSMT17
#     scale (time and peak extra GPU memory), plain and with k-reciprocal re-ranking;
#  5. writes DIR/gpu-<gpu>-<date>.json (pytest-benchmark JSON of the ops + everything else under
#     "gpu_check"), DIR/gpu-<gpu>-<date>.md (every figure beside its goal, pass/fail) and
#     DIR/gpu-<gpu>-<date>.log (".log.partial" while it runs).
#
# A failing step does not stop the later ones: each is recorded, and the script exits 1 at the end if any
# failed (unmet performance goals are reported in the table, not in the exit status). The whole run keeps
# within GPU_CHECK_BUDGET_S seconds (default 540: one 10-minute session), each step within its own limit.
# --quick: the (O) shape only and fewer repetitions. --smoke: the same script end to end on the CPU at tiny
# sizes with the installed package, skipping what needs CUDA (one line each) -- it checks the kit itself.
# Without a CUDA device (and without --smoke) it says so on one line and exits 3 before building anything.
# Python is `python3` from PATH, or $PYTHON.

set -u -o pipefail

usage() {
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    echo "options: --out DIR (default benchmarks/results), --quick, --smoke; see the header of $0"
}

OUT_DIR=benchmarks/results
QUICK=0
SMOKE=0
while (($#)); do
    case "$1" in
        --out)
            if (($# < 2)) || [[ -z "$2" ]]; then echo "gpu_check: --out needs a folder" >&2; exit 2; fi
            OUT_DIR=$2; shift 2 ;;
        --out=*) OUT_DIR=${1#--out=}; shift ;;
        --quick) QUICK=1; shift ;;
        --smoke) SMOKE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "gpu_check: no CUDA device can be used: the Python '$PY' is not found (set \$PYTHON)"
    exit 3
fi
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
if ! [[ "$BUDGET_S" =~ ^[0-9]+$ ]] || ((BUDGET_S < 60)); then
    echo "gpu_check: GPU_CHECK_BUDGET_S must be a whole number of seconds >= 60, got '$BUDGET_S'" >&2
    exit 2
fi
START_S=$(date +%s)
DEADLINE_S=$((START_S + BUDGET_S))
REPORT_RESERVE_S=15        # kept for the report at the end
AFTER_BENCH_RESERVE_S=100  # kept for the train step and the evaluation, which come after the op benchmarks

# --- the device: decided before anything is built -----------------------------------------------------------
if ((SMOKE)); then
    DEVICE=cpu
    GPU_NAME=cpu-smoke
    ARCH=
    MODE=smoke
else
    PROBE=$("$PY" benchmarks/gpu_check_env.py --probe 2>/dev/null)
    PROBE_RC=$?
    if ((PROBE_RC != 0)); then
        REASON=$(printf '%s' "$PROBE" | head -n 1)
        echo "gpu_check: no CUDA device (${REASON:-the probe failed with exit $PROBE_RC}); nothing was built or run. --smoke checks the kit on the CPU."
        exit 3
    fi
    IFS=$'\t' read -r GPU_NAME ARCH <<<"$PROBE"
    DEVICE=cuda
    MODE=$([[ $QUICK == 1 ]] && echo quick || echo full)
    unset TRITON_INTERPRET  # the Triton kernels must compile for the GPU, not run in the interpreter
fi

SLUG=$(printf '%s' "$GPU_NAME" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+//; s/-+$//')
STAMP=$(date -u +%Y%m%dT%H%MZ)
mkdir -p "$OUT_DIR" || { echo "gpu_check: cannot create the output folder '$OUT_DIR'" >&2; exit 2; }
STEM="$OUT_DIR/gpu-$SLUG-$STAMP"
LOG="$STEM.log"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 2
: >"$WORK/steps.tsv"

# Everything printed from here on also goes to the log, written as LOG.partial and renamed at the end.
exec 3>&1 4>&2
exec > >(tee -a "$LOG.partial") 2>&1
TEE_PID=$!
BG_PID=
finish() {
    if [[ -n "$BG_PID" ]]; then kill "$BG_PID" 2>/dev/null; fi
    if [[ -n "${SAN_PID:-}" ]]; then kill "$SAN_PID" 2>/dev/null; fi
    exec 1>&3 2>&4
    wait "$TEE_PID" 2>/dev/null
    [[ -f "$LOG.partial" ]] && mv -f "$LOG.partial" "$LOG"
    rm -rf "$WORK"
}
trap finish EXIT
trap 'echo "gpu_check: interrupted"; exit 130' INT TERM  # so that finish still renames the log

FAILED=()
record() {  # name status seconds detail
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$WORK/steps.tsv"
}
skip_step() {  # name reason
    echo "gpu_check: skipping $1: $2"
    record "$1" skipped 0 "$2"
}
seconds_left() { echo $((DEADLINE_S - REPORT_RESERVE_S - $(date +%s))); }

run_step() {  # name limit_s command...: run it within min(limit, time left), record how it ended
    local name=$1 cap=$2 left limit t0 rc secs
    shift 2
    left=$(seconds_left)
    if ((left < 5)); then
        echo "gpu_check: not running $name: out of time (budget ${BUDGET_S} s)"
        record "$name" FAILED 0 "not run: out of time (budget ${BUDGET_S} s)"
        FAILED+=("$name")
        return 1
    fi
    limit=$((cap < left ? cap : left))
    echo
    echo "=== $name (limit ${limit} s, $(($(date +%s) - START_S)) s elapsed): $*"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    secs=$(($(date +%s) - t0))
    if ((rc == 0)); then
        record "$name" ok "$secs"
    elif ((rc == 124 || rc == 137)); then
        record "$name" FAILED "$secs" "timed out after ${limit} s"
        FAILED+=("$name")
    else
        record "$name" FAILED "$secs" "exit status $rc"
        FAILED+=("$name")
    fi
    echo "--- $name: $(tail -n 1 "$WORK/steps.tsv" | cut -f 2,4 | tr '\t' ' ') (${secs} s)"
    return "$rc"
}

report() {
    "$PY" benchmarks/gpu_check_report.py --work "$WORK" --out "$STEM" --mode "$MODE" --device-name "$GPU_NAME" ||
        echo "gpu_check: the report could not be written (see above)"
}

echo "gpu_check: mode $MODE, device ${GPU_NAME}${ARCH:+ (sm ${ARCH})}, output $STEM.{json,md,log}, budget ${BUDGET_S} s"
echo "gpu_check: $(git rev-parse --short HEAD 2>/dev/null || echo 'no git')$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)'), python $("$PY" -c 'import sys; print(sys.version.split()[0])')"

# --- 1. build, environment ----------------------------------------------------------------------------------
if ((SMOKE)); then
    skip_step build "needs CUDA; the smoke run uses the installed package"
else
    # ninja compiles the extension's files in parallel; torch falls back to one file at a time without it.
    # A pip-installed ninja lives in the interpreter's scripts folder, which need not be on PATH.
    for dir in "$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)" \
        "$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts", "posix_user"))' 2>/dev/null)"; do
        if [[ -n "$dir" && -d "$dir" ]]; then PATH="$PATH:$dir"; fi
    done
    BUILD_LIMIT_S=240
    if ! command -v ninja >/dev/null 2>&1; then
        echo "gpu_check: ninja is not installed: the extension compiles one file at a time (slower)"
        BUILD_LIMIT_S=360
    fi
    run_step build "$BUILD_LIMIT_S" env SCSTN_VCN_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$(nproc)" \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
fi
run_step environment 90 "$PY" benchmarks/gpu_check_env.py --device "$DEVICE" --json "$WORK/env.json"
if [[ -f "$WORK/env.json" ]]; then
    # every later process divides by this one measured bandwidth
    SCSTN_VCN_COPY_GBPS=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["copy_gbps"])' "$WORK/env.json")
    export SCSTN_VCN_COPY_GBPS
fi

if ((SMOKE)); then
    OPS_ARGS=(--device cpu --shapes tiny --dtypes float32 --backends eager,compile,native --reps 3)
    TRAIN_ARGS=(--device cpu --backbone tiny --size 32x16 --P 2 --K 2 --amp off --backends eager,native --rounds 2)
    EVAL_ARGS=(--device cpu --queries 100 --gallery 1000 --dims 32,64)
    LARGE_ARGS=(--device cpu --queries 20 --gallery 800 --dim 32 --rank 8)
elif ((QUICK)); then
    OPS_ARGS=(--device cuda --shapes O96 --dtypes float32,bfloat16 --reps 20)
    TRAIN_ARGS=(--device cuda --rounds 5)
    EVAL_ARGS=(--device cuda)
    LARGE_ARGS=(--device cuda)
else
    OPS_ARGS=(--device cuda --shapes O96,M96 --dtypes float32,bfloat16 --reps 50)
    TRAIN_ARGS=(--device cuda --rounds 10)
    EVAL_ARGS=(--device cuda)
    LARGE_ARGS=(--device cuda)
fi

# --- 2. GPU tests and compute-sanitizer ------------------------------------------------------------------------
# Three things at once, to fit the budget: the tests in the foreground; compute-sanitizer over the CUDA ops
# and the compilation of what the benchmarks will run (torch.compile, Triton: it fills the inductor and
# Triton caches, so that the timed benchmarks compile nothing) in the background, each to its own file.
# None of them is timed.
if ((SMOKE)); then
    skip_step tests "the CUDA and Triton GPU tests need CUDA"
    skip_step sanitizer "compute-sanitizer needs CUDA"
else
    SANITIZER=$(command -v compute-sanitizer || true)
    for candidate in "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer; do
        if [[ -z "$SANITIZER" && -x "$candidate" ]]; then SANITIZER=$candidate; fi
    done
    SAN_TOOLS=(memcheck racecheck initcheck)
    SAN_LIMIT_S=100
    sanitize() {  # one tool after the other; each leaves WORK/sanitizer-TOOL.{out,rc,secs}
        local tool t0 filter
        for tool in "${SAN_TOOLS[@]}"; do
            # memcheck and racecheck look at this project's kernels only (namespace scstn_vcn); initcheck
            # looks at every kernel, since it must see torch's kernels write the inputs it then reads
            filter=(--kernel-name kns=scstn_vcn)
            [[ $tool == initcheck ]] && filter=()
            t0=$(date +%s)
            echo "\$ compute-sanitizer --tool $tool ${filter[*]:-} ... $PY benchmarks/gpu_check_sanitize.py" \
                >"$WORK/sanitizer-$tool.out"
            timeout --kill-after=10 "$SAN_LIMIT_S" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
                "$SANITIZER" --tool "$tool" ${filter[@]+"${filter[@]}"} --error-exitcode 86 --print-limit 30 \
                "$PY" benchmarks/gpu_check_sanitize.py >>"$WORK/sanitizer-$tool.out" 2>&1
            echo $? >"$WORK/sanitizer-$tool.rc"
            echo $(($(date +%s) - t0)) >"$WORK/sanitizer-$tool.secs"
        done
    }
    if [[ -z "$SANITIZER" ]]; then
        skip_step sanitizer "compute-sanitizer is not installed (looked in PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin)"
        SAN_PID=
    else
        echo "gpu_check: compute-sanitizer ($SANITIZER) runs in the background: ${SAN_TOOLS[*]}"
        sanitize &
        SAN_PID=$!
    fi
    timeout --kill-after=10 $(($(seconds_left) > 60 ? $(seconds_left) - 60 : 1)) \
        "$PY" benchmarks/gpu_check_ops.py "${OPS_ARGS[@]}" --precompile >"$WORK/precompile.log" 2>&1 &
    BG_PID=$!

    # every test that skips without a GPU: the cuda-marked files and cases, and the Triton kernel tests
    run_step tests 300 "$PY" -m pytest tests -k "(cuda or test_triton_kernels) and not test_gpu_check" -q -rfE \
        -p no:cacheprovider --junitxml="$WORK/tests.xml"

    if [[ -n "$SAN_PID" ]]; then
        echo
        echo "=== compute-sanitizer (background): waiting"
        wait "$SAN_PID"
        SAN_PID=
        for tool in "${SAN_TOOLS[@]}"; do
            echo "--- sanitizer-$tool output:"
            if [[ -f "$WORK/sanitizer-$tool.out" ]]; then grep -v '^ok ' "$WORK/sanitizer-$tool.out" | tail -n 80; fi
            rc=$(cat "$WORK/sanitizer-$tool.rc" 2>/dev/null || echo missing)
            secs=$(cat "$WORK/sanitizer-$tool.secs" 2>/dev/null || echo 0)
            if [[ $rc == 0 ]]; then
                record "sanitizer-$tool" ok "$secs"
            else
                case $rc in
                    86) detail="the sanitizer reported errors" ;;
                    124|137) detail="timed out after ${SAN_LIMIT_S} s" ;;
                    missing) detail="did not run" ;;
                    *) detail="exit status $rc" ;;
                esac
                record "sanitizer-$tool" FAILED "$secs" "$detail"
                FAILED+=("sanitizer-$tool")
            fi
            echo "--- sanitizer-$tool: $(tail -n 1 "$WORK/steps.tsv" | cut -f 2,4 | tr '\t' ' ') (${secs} s)"
        done
    fi

    echo
    echo "=== precompile (background): waiting"
    wait "$BG_PID"
    PRE_RC=$?
    BG_PID=
    sed 's/^/  precompile: /' "$WORK/precompile.log" | tail -n 40
    if ((PRE_RC == 0)); then
        record precompile ok 0 "torch.compile and Triton caches filled in the background"
    else
        # not a failure of its own: the op benchmarks compile what is missing and report what fails
        record precompile warning 0 "exit status $PRE_RC; the op benchmarks compile what is missing"
    fi
fi

# --- 3. op benchmarks ------------------------------------------------------------------------------------------
run_step op-benchmarks 330 "$PY" benchmarks/gpu_check_ops.py "${OPS_ARGS[@]}" --json "$WORK/ops.json" \
    --deadline $((DEADLINE_S - REPORT_RESERVE_S - AFTER_BENCH_RESERVE_S))
report

# --- 4. training step, evaluation -------------------------------------------------------------------------------
run_step train-step 120 "$PY" benchmarks/gpu_check_train.py "${TRAIN_ARGS[@]}" --json "$WORK/train.json" \
    --deadline $((DEADLINE_S - REPORT_RESERVE_S - 40))
report
run_step evaluation 90 "$PY" benchmarks/gpu_check_eval.py "${EVAL_ARGS[@]}" --json "$WORK/eval.json"
report
run_step evaluation-rerank 120 "$PY" benchmarks/gpu_check_eval.py "${EVAL_ARGS[@]}" --rerank \
    --json "$WORK/eval_rerank.json"
report
# exact re-ranking at Market-1501 + 500k distractors (goal < 60 s; benchmarks/gpu_check_large.py)
run_step rerank-large 150 "$PY" benchmarks/gpu_check_large.py "${LARGE_ARGS[@]}" \
    --json "$WORK/rerank_large.json"

# --- 5. report, summary ----------------------------------------------------------------------------------------
echo
report
echo
echo "=== summary ($(($(date +%s) - START_S)) s, mode $MODE)"
while IFS=$'\t' read -r name status secs detail; do
    printf '  %-20s %-8s %5ss %s\n' "$name" "$status" "$secs" "$detail"
done <"$WORK/steps.tsv"
echo "  files: $STEM.json, $STEM.md, $LOG"
if ((${#FAILED[@]})); then
    echo "gpu_check: FAILED steps: ${FAILED[*]}"
    exit 1
fi
echo "gpu_check: every step ran"
exit 0
