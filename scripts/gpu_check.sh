#!/usr/bin/env bash
# The GPU check: one command for a machine with one NVIDIA GPU and no internet (torch with CUDA, triton, pytest
# already installed; mmsegmentation not needed), sized for about 8 minutes on an H100 (not yet timed on one):
#   build     FORCE_CUDA=1 for the visible GPU's arch (--no-build-isolation --no-deps: the machine's torch)
#   info      what was built and which backend runs
#   check     python -m benchmarks.gpu_check all: correctness of every op (cuda, Triton) against the reference,
#             op timings as % of the copy bandwidth, four-model fps (fp32, bf16 autocast), training memory
#   sanitize  compute-sanitizer memcheck and racecheck over every op of the CUDA and Triton backends at small odd shapes
#   pytest    the needs_cuda tests, Triton compiled (TRITON_INTERPRET=0)
#   sweep     only when named in --only: the Triton launch geometry over a small grid at the stage shapes
#             (python -m benchmarks.gpu_check sweep; its own CSV and summary-sweep.txt)
# CSVs, summary.txt and gpu_check.log (every step's output under its name) go to $OUT if set, else gpu_results/:
# six files (eight with the sweep), so that a runner which brings back few files brings back all of them. Exit 1 if a step failed.
# --budget SECONDS: finish within that many seconds (for a lent machine with a time limit): after the build, the
#   check starts no step or model after half of the time left and is stopped at two thirds; the sanitizers and
#   the tests share the rest, each stopped when its share runs out. Whatever finished is kept, and the summary
#   says what was left out.
# --dry-run: the same on the CPU at tiny shapes, no build, no sanitizer, no GPU tests (CI runs this).
# --skip-build: use the resnest_fast already installed.
# --only STEP[,STEP...]: just these of build, check, sanitize, pytest, sweep (info always runs), e.g. to finish on a
#   warm machine what a budget cut: --skip-build --only sanitize,pytest; or --skip-build --only sweep. A call with
#   --only reruns steps into the same $OUT: their CSVs and summaries replace those of the earlier call.
# --overwrite: replace the results of an earlier run in $OUT (without it, and without --only, an $OUT that holds a
#   summary is refused before anything runs).
# Ctrl-C stops the step that runs (the check writes what it measured so far, its summary saying it is partial),
#   appends its output to the log and exits 130.
# Usage: bash scripts/gpu_check.sh [--dry-run] [--skip-build] [--budget SECONDS] [--only STEPS] [--overwrite]
set -uo pipefail
cd "$(dirname "$0")/.."
usage() {
  echo "usage: bash scripts/gpu_check.sh [--dry-run] [--skip-build] [--budget SECONDS] [--only STEP[,STEP...]]" \
    "[--overwrite]" >&2
  exit 2
}
DRY=0
BUILD=1
BUDGET=""
BUDGET_GIVEN=0
ONLY=build,check,sanitize,pytest
ONLY_GIVEN=0
OVERWRITE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --skip-build) BUILD=0 ;;
    --budget) shift; BUDGET=${1:-}; BUDGET_GIVEN=1 ;;
    --budget=*) BUDGET=${1#--budget=}; BUDGET_GIVEN=1 ;;
    --only) shift; ONLY=${1:-}; ONLY_GIVEN=1 ;;
    --only=*) ONLY=${1#--only=}; ONLY_GIVEN=1 ;;
    --overwrite) OVERWRITE=1 ;;
    *) usage ;;
  esac
  shift
done
if [ $BUDGET_GIVEN -eq 1 ]; then
  # decimal whatever the leading zeros (bash arithmetic reads 0100 as octal and 090 as an error)
  digits=${BUDGET#"${BUDGET%%[!0]*}"}
  if ! [[ "$BUDGET" =~ ^[0-9]+$ ]] || [ ${#digits} -gt 9 ] || [ $((10#${digits:-0})) -lt 60 ]; then
    echo "gpu_check: --budget takes whole seconds, from 60 to 999999999 (got '$BUDGET')" >&2
    exit 2
  fi
  BUDGET=$((10#$digits))
fi
if ! [[ "$ONLY" =~ ^(build|check|sanitize|pytest|sweep)(,(build|check|sanitize|pytest|sweep))*$ ]]; then
  echo "gpu_check: --only takes steps among build, check, sanitize, pytest, sweep, comma-separated (got '$ONLY')" >&2
  exit 2
fi
want() { [[ ",$ONLY," == *",$1,"* ]]; }
OUT=${OUT:-gpu_results}
# where the results go, checked before anything runs: a file at or above $OUT, a folder that cannot be written, or
# (a first call, without --overwrite) the summary of an earlier run, which this one would replace
existing=$OUT
while [ ! -e "$existing" ] && [ ! -L "$existing" ]; do existing=$(dirname "$existing"); done
if [ ! -d "$existing" ]; then
  if [ "$existing" = "$OUT" ]; then what="is not a folder"; else what="cannot be created: $existing is not a folder"; fi
  echo "gpu_check: OUT '$OUT' $what" >&2
  exit 2
fi
if [ ! -w "$existing" ] || [ ! -x "$existing" ]; then
  echo "gpu_check: OUT '$OUT' cannot be written: permission denied in $existing" >&2
  exit 2
fi
overwrite=()  # the Python steps refuse files of an earlier run unless told
if [ $OVERWRITE -eq 1 ] || [ $ONLY_GIVEN -eq 1 ]; then
  overwrite=(--overwrite)
elif [ -e "$OUT/summary.txt" ]; then
  echo "gpu_check: OUT '$OUT' holds the results of an earlier run (summary.txt): pass --overwrite to replace them," \
    "or set OUT to another folder" >&2
  exit 2
fi
START=$(date +%s)
DEADLINE=${BUDGET:+$((START + BUDGET))}
PY=${PYTHON:-python3}
if [ $DRY -eq 0 ] && ! arch=$("$PY" -c "import sys, torch
sys.exit(1) if not torch.cuda.is_available() else print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null); then
  echo "gpu_check: torch sees no CUDA GPU here (on a CPU machine: bash scripts/gpu_check.sh --dry-run)" >&2
  exit 2
fi
mkdir -p "$OUT"
# the summaries as they were before this run: only one this run wrote is shown at the end
summary_was() { stat -c '%i %y %s' "$1" 2>/dev/null; }
check_summary_before=$(summary_was "$OUT/summary.txt")
sweep_summary_before=$(summary_was "$OUT/summary-sweep.txt")
LOG="$OUT/gpu_check.log"  # appended to: a later call with --only adds to the log of the first
echo "######## bash scripts/gpu_check.sh $* ($(date -u '+%Y-%m-%d %H:%M:%S UTC'))" >>"$LOG"
failed=()
cut=()

left() {  # seconds until the deadline (a large number without --budget)
  if [ -n "$DEADLINE" ]; then echo $((DEADLINE - $(date +%s))); else echo 999999; fi
}

part=""       # the running step's output (a temporary file), appended to $LOG when the step ends
step_name=""
step_pid=""   # the running step's `timeout`, when it has a limit
trap '[ -z "$part" ] || rm -f "$part"' EXIT
on_interrupt() {  # Ctrl-C: the step that runs is stopped (a step under `timeout` is in a process group of its own,
                  # which the terminal's Ctrl-C does not reach), its output kept in $LOG, one line, exit 130
  trap '' INT
  if [ -n "$step_pid" ]; then
    kill -INT "$step_pid" 2>/dev/null
    wait "$step_pid"
  fi
  if [ -n "$part" ] && [ -f "$part" ]; then
    { echo "== $step_name (interrupted by Ctrl-C)"; cat "$part"; } >>"$LOG"
  fi
  echo "gpu_check: interrupted (Ctrl-C)${step_name:+ during $step_name}; the output so far is in $LOG" >&2
  exit 130
}
trap on_interrupt INT

step() {  # step NAME LIMIT COMMAND...: runs it (stopped after LIMIT seconds unless LIMIT is empty) with its
          # output appended to $LOG under its name, says how it went, and goes on either way
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  echo "== $name"
  if [ -n "$limit" ] && [ "$limit" -le 0 ]; then
    echo "   skipped: no time left in the budget"
    echo "== $name: skipped, no time left in the budget" >>"$LOG"
    cut+=("$name")
    return
  fi
  step_name=$name
  part=$(mktemp)
  if [ -n "$limit" ]; then
    # waited for in the background, so that Ctrl-C reaches on_interrupt at once
    timeout --kill-after=15 "$limit" "$@" >"$part" 2>&1 &
    step_pid=$!
    wait "$step_pid"
    rc=$?
    step_pid=""
  else
    "$@" >"$part" 2>&1
    rc=$?
  fi
  { echo "== $name (exit $rc, $(( $(date +%s) - start )) s)"; cat "$part"; } >>"$LOG"
  if [ $rc -eq 0 ]; then
    echo "   ok in $(( $(date +%s) - start )) s"
  elif [ -n "$limit" ] && { [ $rc -eq 124 ] || [ $rc -eq 137 ]; }; then
    echo "   stopped at its share of the budget ($limit s); what it finished is kept"
    cut+=("$name")
  else
    echo "   FAILED (exit $rc) in $(( $(date +%s) - start )) s; the end of its output (all of it in $LOG):"
    tail -25 "$part" | sed 's/^/   | /'
    failed+=("$name")
  fi
  rm -f "$part"
  part=""
  step_name=""
}

share() {  # share NUM DEN: NUM/DEN of the time left less 20 s for stopping and the summary, or nothing (no limit)
           # without --budget
  if [ -n "$DEADLINE" ]; then echo $(( ($(left) - 20) * $1 / $2 )); fi
}

if [ $DRY -eq 1 ]; then
  step info "" "$PY" -m resnest_fast info
  if want check; then
    step check "" env TRITON_INTERPRET=1 "$PY" -m benchmarks.gpu_check all --dry-run --out "$OUT" \
      ${DEADLINE:+--deadline "$DEADLINE"} "${overwrite[@]}"
  fi
  if want sweep; then
    step sweep "" env TRITON_INTERPRET=1 "$PY" -m benchmarks.gpu_check sweep --dry-run --out "$OUT" \
      ${DEADLINE:+--deadline "$DEADLINE"} "${overwrite[@]}"
  fi
else
  export TRITON_INTERPRET=0
  "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
  if [ $BUILD -eq 1 ] && want build; then
    step build "" env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "$PY" -m pip install -v --no-build-isolation --no-deps -e .
  fi
  step info "" "$PY" -m resnest_fast info
  # the figures first (correctness, timings); with a budget the check starts nothing after half of the time left
  if want check; then
    check_deadline=${DEADLINE:+$(( $(date +%s) + $(left) / 2 ))}
    step check "$(share 2 3)" "$PY" -m benchmarks.gpu_check all --out "$OUT" \
      ${check_deadline:+--deadline "$check_deadline"} "${overwrite[@]}"
  fi
  if want sanitize && ! command -v compute-sanitizer >/dev/null; then
    echo "== sanitize: compute-sanitizer not found, skipped"
  elif want sanitize; then
    step sanitize-memcheck "$(share 1 3)" compute-sanitizer --tool memcheck --error-exitcode 1 \
      "$PY" -m benchmarks.gpu_check sanitize
    step sanitize-racecheck "$(share 1 2)" compute-sanitizer --tool racecheck --error-exitcode 1 \
      "$PY" -m benchmarks.gpu_check sanitize
  fi
  if want pytest; then
    # only the files that hold GPU tests: the others may import what a GPU image lacks (the training stack's
    # cityscapesscripts, mmsegmentation), and a collection error would fail the step without running a GPU test
    mapfile -t gpu_tests < <(grep -rl --include='test_*.py' needs_cuda tests | sort)
    # with pytest-xdist, several processes share the GPU: Triton compiles each specialisation on its first use,
    # one at a time in a process
    workers=()
    if "$PY" -c "import xdist" 2>/dev/null; then workers=(-n "$(( $(nproc) < 8 ? $(nproc) : 8 ))"); fi
    step pytest "$(share 1 1)" "$PY" -m pytest -q -p no:cacheprovider "${workers[@]}" -m needs_cuda "${gpu_tests[@]}"
  fi
  if want sweep; then
    step sweep "$(share 1 1)" "$PY" -m benchmarks.gpu_check sweep --out "$OUT" \
      ${DEADLINE:+--deadline "$(( $(date +%s) + $(left) * 2 / 3 ))"} "${overwrite[@]}"
  fi
fi

for summary_step in check sweep; do
  file="$OUT/summary.txt"
  before=$check_summary_before
  if [ "$summary_step" = sweep ]; then file="$OUT/summary-sweep.txt"; before=$sweep_summary_before; fi
  if want "$summary_step" && [ -f "$file" ] && [ "$(summary_was "$file")" != "$before" ]; then
    echo
    cat "$file"
    if grep -q "^skipped at the deadline" "$file"; then
      cut+=("$summary_step (part)")
    fi
  fi
done
if [ ${#cut[@]} -gt 0 ]; then
  echo "gpu_check: cut short by the budget: ${cut[*]} (the summary lists what was left out)"
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_check: failed steps: ${failed[*]} (output in $LOG)"
  exit 1
fi
if [ ${#cut[@]} -gt 0 ]; then
  exit 1
fi
echo "gpu_check: all steps passed in $(( $(date +%s) - START )) s (results in $OUT/)"
