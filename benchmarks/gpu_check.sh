#!/usr/bin/env bash
# Everything one CUDA GPU can show about this project, in under 8 minutes, into one folder.
#
#   bash benchmarks/gpu_check.sh OUT                     # on a CUDA machine
#   bash benchmarks/gpu_check.sh --cpu-dry-run OUT       # the same steps, toy sizes, CPU only
#   bash benchmarks/gpu_check.sh --steps crosscheck,bench_fp32 OUT    # some steps only
#   bash benchmarks/gpu_check.sh --fetch-wheels          # networked machine: wheels for an offline one
#
# Steps, in this order (each under `timeout`; a failure is recorded and the next step runs):
#   env         nvidia-smi, Python, torch, CUDA, cuDNN, device -> env.json, nvidia-smi.txt
#   demo_fp32, demo_bf16   demo.py --gpu 0 at its full schedule, both at once on the one GPU, in
#               the background beside cuda_tests and crosscheck (none of these is timed; the
#               demos' mean IU per stage is the result) -> logs/demo_*.log
#   cuda_tests  every test that skips without CUDA (benchmarks/gpu_report.py cuda-tests lists
#               them), pytest -v -rA -> cuda-tests.xml (JUnit) and logs/cuda_tests.log (each
#               result as it comes, read when a step cut short left no XML)
#   crosscheck  benchmarks/gpu_crosscheck.py: FCN-8s 500x500 forward, backward and 5 SGD steps,
#               CUDA fp32 against CPU fp32 (and both against CPU fp64) -> crosscheck.json
#   (the demos are waited for here, so that the benchmarks have the machine to themselves)
#   bench_fp32  benchmarks/bench_fcn.py --gpu, FCN-8s and FCN-32s at 500x500 and 500x375,
#               engine and nn.Module -> bench-fp32.json (rewritten after each net and size, so
#               a step cut short by its budget keeps what it measured)
#   bench_bf16, bench_tf32 as bench_fp32 in the other precisions -> bench-bf16.json, bench-tf32.json
#   summary     benchmarks/gpu_report.py summary: summary.json (every step's status, seconds,
#               budget and numbers) and report.md (the tables, ready for the README)
# --steps takes step names or the groups env, cuda_tests, crosscheck, bench, demo.
#
# The whole run stops at GPU_CHECK_BUDGET_S seconds (default 450; 300 for the dry run): each
# step gets the smaller of its own budget and what is left, less 20 s kept for the summary.
# GPU_CHECK_STEP_S, if set, caps every step's budget (a quick look; the tests use it).
# --cpu-dry-run: the same steps on the CPU (cuda_tests run and skip; crosscheck compares CPU
# float32 with float64 on a 1/16-width net at 64x48; bench FCN-8s at 48x40, width 1/16, 1 repeat;
# demo --quick).
#
# Python: GPU_CHECK_PYTHON if set; else the project's .venv (refreshed by scripts/venv.sh, as
# run_tests.sh does) if it exists; else python3 on PATH if it imports everything (a GPU image's
# own torch), after installing any wheels in GPU_CHECK_WHEELS (default .whl/, made by
# --fetch-wheels); else a new .venv from scripts/venv.sh (needs the network).
#
# On a lent machine whose files come back only from $OUT (8 files at most), run it as
#   bash benchmarks/gpu_check.sh /tmp/gc; tar czf $OUT/gpu-check.tgz -C /tmp gc; cp /tmp/gc/report.md /tmp/gc/summary.json $OUT/
# with the device tool's timeout_s 540 and carry [".whl"] (after --fetch-wheels here).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=gpu
STEPS=env,cuda_tests,crosscheck,bench,demo
FETCH=0
OUT_ARG=
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-dry-run) MODE=cpu-dry-run ;;
        --steps) STEPS="$2"; shift ;;
        --steps=*) STEPS="${1#--steps=}" ;;
        --fetch-wheels) FETCH=1 ;;
        -h|--help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) OUT_ARG="$1" ;;
    esac
    shift
done
cd "$ROOT" || exit 2

WHEELS="${GPU_CHECK_WHEELS:-$ROOT/.whl}"

fetch_wheels() {
    # The pure-Python or manylinux wheels a GPU image without the network may lack, at the
    # versions pyproject.toml pins: protobuf (caffe_pb2.py needs its major version), the
    # database readers, pydot.
    local py="${GPU_CHECK_PYTHON:-$ROOT/.venv/bin/python}" pyver="${GPU_CHECK_WHEEL_PY:-3.12}"
    [ -x "$py" ] || py=python3
    mkdir -p "$WHEELS"
    if [ -d "$ROOT/.git/info" ] && [ "$WHEELS" = "$ROOT/.whl" ]; then
        grep -qx '/.whl/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.whl/' >>"$ROOT/.git/info/exclude"
    fi
    local failed=0 spec
    for spec in $(grep -oE '"(protobuf|pydot|lmdb|plyvel)==[^"]+"' pyproject.toml | tr -d '"') pyparsing; do
        "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$pyver" \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d "$WHEELS" "$spec" || { echo "could not fetch $spec"; failed=1; }
    done
    ls -l "$WHEELS"
    echo "carry $(basename "$WHEELS") to the GPU machine (the device tool's carry: [\".whl\"])"
    return $failed
}
if [ $FETCH = 1 ]; then fetch_wheels; exit $?; fi

if [ -z "$OUT_ARG" ]; then echo "usage: gpu_check.sh [--cpu-dry-run] [--steps LIST] OUT" >&2; exit 2; fi
mkdir -p "$OUT_ARG/logs" || exit 2
OUT="$(cd "$OUT_ARG" && pwd)"
rm -f "$OUT/steps.jsonl" "$OUT/summary.json" "$OUT/report.md"
if [ $MODE = gpu ]; then BUDGET="${GPU_CHECK_BUDGET_S:-450}"; else BUDGET="${GPU_CHECK_BUDGET_S:-300}"; fi
RESERVE=20
START=$(date +%s)
DEADLINE=$((START + BUDGET))
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

json_str() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "${s//$'\n'/ }"; }

record() {  # name status seconds budget log
    printf '{"step": %s, "status": %s, "seconds": %s, "budget_s": %s, "log": %s}\n' \
        "$(json_str "$1")" "$(json_str "$2")" "$3" "$4" "$(json_str "$5")" >>"$OUT/steps.jsonl"
}

wanted() {  # step group
    [[ ",$STEPS," == *",$1,"* || ",$STEPS," == *",$2,"* ]]
}

run_step() {  # name budget command...: run under timeout, record status and time
    local name=$1 budget=$2
    shift 2
    local log="logs/$name.log" left=$((DEADLINE - $(date +%s) - RESERVE))
    if [ $left -lt 10 ]; then
        record "$name" "skipped: out of time (the run's budget is $BUDGET s)" 0 0 "$log"
        echo "== $name: skipped, out of time"
        return 0
    fi
    [ "$budget" -gt $left ] && budget=$left
    [ -n "${GPU_CHECK_STEP_S:-}" ] && [ "$budget" -gt "$GPU_CHECK_STEP_S" ] && budget=$GPU_CHECK_STEP_S
    echo "== $name (at most $budget s): $*"
    local t0 t1 rc status
    t0=$(date +%s.%N)
    timeout -k 10 "$budget" "$@" >"$OUT/$log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    case $rc in
        0) status=ok ;;
        124|137) status="timed out after $budget s" ;;
        *) status="failed (exit $rc)" ;;
    esac
    local secs
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    record "$name" "$status" "$secs" "$budget" "$log"
    echo "   $name: $status in $secs s"
    tail -n 3 "$OUT/$log" | sed 's/^/   | /'
}

# ---------------------------------------------------------------- setup: the interpreter
SETUP_LOG="$OUT/logs/setup.log"
: >"$SETUP_LOG"
CHECK='import numpy, scipy, PIL, h5py, cv2, pytest, google.protobuf, torch, torchcaffe'
[ $MODE = gpu ] && CHECK="$CHECK"'; assert torch.cuda.is_available(), "torch sees no CUDA device"'
usable() { echo "-- checking $1" >>"$SETUP_LOG"; "$1" -c "$CHECK" >>"$SETUP_LOG" 2>&1; }
venv_sh() {  # scripts/venv.sh, as run_tests.sh sources it; pip fails fast without a network
    echo "-- scripts/venv.sh" >>"$SETUP_LOG"
    PIP_RETRIES=0 PIP_TIMEOUT=20 timeout -k 10 "$1" bash -c 'source scripts/venv.sh' >>"$SETUP_LOG" 2>&1
}
setup_t0=$(date +%s)
PY= HOW=
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    PY=$GPU_CHECK_PYTHON HOW="GPU_CHECK_PYTHON"
    usable "$PY" || HOW="$HOW (does not import everything: see logs/setup.log)"
elif [ -x "$ROOT/.venv/bin/python" ] && venv_sh 600 && usable "$ROOT/.venv/bin/python"; then
    PY="$ROOT/.venv/bin/python" HOW=".venv (scripts/venv.sh)"
elif command -v python3 >/dev/null && { usable python3 || {
        ls "$WHEELS"/*.whl >/dev/null 2>&1 &&
        echo "-- installing $WHEELS/*.whl into $WORK/site" >>"$SETUP_LOG" &&
        python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" \
            "$WHEELS"/*.whl >>"$SETUP_LOG" 2>&1 &&
        export PYTHONPATH="$WORK/site:$PYTHONPATH" && usable python3; }; }; then
    PY="$(command -v python3)" HOW="python3 on PATH"
    [[ "$PYTHONPATH" == "$WORK/site:"* ]] && HOW="$HOW, with the wheels of $WHEELS"
elif venv_sh 1200 && usable "$ROOT/.venv/bin/python"; then
    PY="$ROOT/.venv/bin/python" HOW="new .venv (scripts/venv.sh)"
fi
if [ -z "$PY" ]; then
    PY=python3 HOW="none usable: see logs/setup.log"
    record setup "failed: no Python with torch$([ $MODE = gpu ] && echo ' (CUDA)') and the project's packages" \
        $(($(date +%s) - setup_t0)) null logs/setup.log
else
    record setup ok $(($(date +%s) - setup_t0)) null logs/setup.log
fi
echo "gpu_check ($MODE) into $OUT with $PY [$HOW]; budget $BUDGET s"
printf '{"mode": %s, "budget_s": %s, "started_epoch": %s, "started": %s, "root": %s, "python": %s, "setup": %s, "steps_requested": %s}\n' \
    "$(json_str $MODE)" "$BUDGET" "$START" "$(json_str "$(date -u -d @"$START" +%FT%TZ)")" \
    "$(json_str "$ROOT")" "$(json_str "$PY")" "$(json_str "$HOW")" "$(json_str "$STEPS")" >"$OUT/run.json"

# ---------------------------------------------------------------- the steps
if wanted env env; then
    if command -v nvidia-smi >/dev/null; then nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
    else echo "nvidia-smi: not found" >"$OUT/nvidia-smi.txt"; fi
    run_step env 60 "$PY" benchmarks/gpu_report.py env "$OUT/env.json"
fi

# The demos run in the background beside cuda_tests and crosscheck (nothing there is timed;
# the demos' mean IU is what counts) and are waited for before the benchmarks start.
if wanted demo_fp32 demo || wanted demo_bf16 demo; then
    # the demo data once (both runs would write it), then fp32 and bf16 side by side
    run_step demo_data 60 "$PY" -c 'import demo; demo.ensure_data()'
    if [ $MODE = gpu ]; then args=(--gpu 0); else args=(--quick --threads 1); fi
    for p in fp32 bf16; do
        if wanted "demo_$p" demo; then
            run_step "demo_$p" 200 "$PY" demo.py "${args[@]}" --precision $p --out "$WORK/demo-$p" &
        fi
    done
fi

if wanted cuda_tests cuda_tests; then
    mapfile -t CUDA_TESTS < <("$PY" benchmarks/gpu_report.py cuda-tests)
    echo "${#CUDA_TESTS[@]} CUDA-only tests: ${CUDA_TESTS[*]}" >"$OUT/logs/cuda_tests.list"
    run_step cuda_tests 150 "$PY" -m pytest -v -rA -p no:cacheprovider \
        --junitxml="$OUT/cuda-tests.xml" "${CUDA_TESTS[@]}"
fi

if wanted crosscheck crosscheck; then
    if [ $MODE = gpu ]; then args=(--fp64); else args=(--cpu-dry-run --threads 2); fi
    run_step crosscheck 150 "$PY" benchmarks/gpu_crosscheck.py "${args[@]}" \
        --json "$OUT/crosscheck.json"
fi

bench() {  # precision budget
    if [ $MODE = gpu ]; then args=(--gpu --nets 8s,32s --sizes 500x500,500x375)  # the targets' net first
    else args=(--nets 8s --sizes 48x40 --width 0.0625 --repeats 1 --warmup 0 --images 1 --threads 2); fi
    run_step "bench_$1" "$2" "$PY" benchmarks/bench_fcn.py --precision "$1" \
        "${args[@]}" --json "$OUT/bench-$1.json"
}
wait  # for the demos
wanted bench_fp32 bench && bench fp32 120

wanted bench_bf16 bench && bench bf16 100
wanted bench_tf32 bench && bench tf32 100

# ---------------------------------------------------------------- summary
echo "== summary"
timeout -k 5 60 "$PY" benchmarks/gpu_report.py summary "$OUT" ||
    { rc=$?; [ $rc = 1 ] || timeout 60 python3 benchmarks/gpu_report.py summary "$OUT"; }
echo "gpu_check: $(($(date +%s) - START)) s; results in $OUT (summary.json, report.md)"
"$PY" -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["ok"] else 1)' \
    "$OUT/summary.json" 2>/dev/null
