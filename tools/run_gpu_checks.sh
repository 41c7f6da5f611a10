#!/usr/bin/env bash
# The one command to run on the GPU machine, from anywhere:  bash tools/run_gpu_checks.sh [STAGE ...]
#
# Stages (default: test sanitize bench), run in the order given:
#   build     MAX_JOBS=16 python3 setup.py build_ext --inplace          -> $OUT/build.log   (opt-in)
#   test      python3 -m pytest -m gpu -x -q                            -> $OUT/pytest.log
#   test90    the kernel tests on the Hopper path (FLASH_TREE_ATTN_TEST_PATH=sm90) -> $OUT/pytest-sm90.log
#   sanitize  compute-sanitizer memcheck + racecheck on tools/sanitizer_case.py, sm80 path; on Hopper also
#             the sm90 path -> $OUT/sanitizer.log; the summary
#             at the end shows it grouped by location (tools/sanitizer_summary.py)
#   bench     python3 tools/bench.py          -> $OUT/bench.{json,png,txt,log}
#   quick     python3 tools/bench.py --quick  -> $OUT/bench-quick.{json,png,txt,log}
# Environment: OUT (default ./gpu_out), PYTHON (default python3), BENCH_ARGS (extra bench.py arguments,
# e.g. "--paths auto,sm80"), BUDGET_S (default 570: total seconds; each stage's timeout is cut so that the
# summary still prints inside the budget, and a stage with under 30 s left is skipped; the bench stages get
# BENCH_BUDGET_S = their timeout - 60 s, after which bench.py starts no new row and reports what it has).
# Every stage runs even when an earlier one failed; the summary (pass/fail per stage, then the bench table)
# is printed last. Exit status: 0 when every stage run passed.
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-$PWD/gpu_out}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-570}
mkdir -p "$OUT"
T0=$SECONDS
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(test sanitize bench)
SUMMARY=()
FAILED=0

# (1) carried wheels (e.g. nvidia-cutlass for a build there, or a prebuilt flash-tree-attn wheel)
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --upgrade --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# (2) the machine
nvidia-smi -L
"$PY" - <<'EOF'
import torch
print(f"torch {torch.__version__} cuda {torch.version.cuda} cudnn {torch.backends.cudnn.version()} "
      f"gpu {torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE'}")
try:
    import triton
    print(f"triton {triton.__version__}")
except Exception as e:
    print(f"triton: {e}")
try:
    import flash_tree_attn as f
    print(f"flash_tree_attn {f.__version__} at {f.__file__}; extension loaded: {f._ops.EXTENSION_LOADED} "
          f"{f._ops.EXTENSION_ERROR or ''}; build: {f._ops.build_info()}")
except Exception as e:
    print(f"flash_tree_attn import failed: {type(e).__name__}: {e}")
EOF

# stage NAME DEFAULT_TIMEOUT LOG CMD...: runs CMD with its output in LOG, records PASS/FAIL
stage() {
  local name=$1 limit=$2 logf=$3; shift 3
  local left=$((BUDGET_S - (SECONDS - T0) - 20))
  if [ "$left" -lt 30 ]; then
    SUMMARY+=("$(printf '%-9s SKIPPED (budget %ss spent)' "$name" "$BUDGET_S")"); FAILED=1; return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  echo "=== stage $name (timeout ${limit}s) -> $logf"
  local t=$SECONDS rc
  # bench.py stops starting rows BENCH_BUDGET_S after it starts, leaving time for its report
  BENCH_BUDGET_S=$((limit > 120 ? limit - 60 : limit / 2)) timeout -k 10 "$limit" "$@" >"$logf" 2>&1
  rc=$?
  case $name in bench|quick) tail -n 3 "$logf" ;; *) tail -n 15 "$logf" ;; esac  # bench tables: in the summary
  local verdict=PASS
  if [ $rc -ne 0 ]; then
    verdict="FAIL (rc $rc)"; FAILED=1
    [ $rc -eq 124 ] && verdict="FAIL (timeout ${limit}s)"
    [ "$name" = test ] && [ $rc -eq 5 ] && verdict="FAIL (rc 5: no GPU test collected)"
  fi
  SUMMARY+=("$(printf '%-9s %-32s %4ss  %s' "$name" "$verdict" $((SECONDS - t)) "$logf")")
}

sanitize() {
  local cs rc=0 hopper
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  run_tool() {  # PATH TOOL; racecheck skips the repeated trees (minutes each under it; memcheck runs them)
    local extra=()
    [ "$2" = racecheck ] && extra=(--no-repeat)
    echo "--- FLASH_TREE_ATTN_PATH=$1 compute-sanitizer --tool $2${extra[*]:+ ${extra[*]}}"
    FLASH_TREE_ATTN_PATH=$1 PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool "$2" --error-exitcode 1 --print-limit 30 \
      "$PY" tools/sanitizer_case.py "${extra[@]}"
  }
  for tool in memcheck racecheck; do run_tool sm80 $tool || rc=1; done
  hopper=$("$PY" -c "import torch; from flash_tree_attn import _ops; print(int(torch.cuda.get_device_capability() == (9, 0) and 'sm90' in _ops.build_info().get('kernel_paths', [])))" 2>/dev/null)
  if [ "$hopper" = 1 ]; then
    for tool in memcheck racecheck; do run_tool sm90 $tool || rc=1; done
  fi
  return $rc
}
export -f sanitize
export PY

for s in "${STAGES[@]}"; do
  case $s in
    build) stage build 540 "$OUT/build.log" env MAX_JOBS=${MAX_JOBS:-16} "$PY" setup.py build_ext --inplace ;;
    test) stage test 420 "$OUT/pytest.log" "$PY" -m pytest -m gpu -x -q ;;
    test90) stage test90 240 "$OUT/pytest-sm90.log" env FLASH_TREE_ATTN_TEST_PATH=sm90 "$PY" -m pytest -m gpu -x -q tests/test_kernels.py ;;
    sanitize) stage sanitize 420 "$OUT/sanitizer.log" bash -c sanitize ;;
    bench) rm -f "$OUT/bench.txt"; stage bench 540 "$OUT/bench.log" "$PY" tools/bench.py --out-json "$OUT/bench.json" $BENCH_ARGS ;;
    quick) rm -f "$OUT/bench-quick.txt"; stage quick 300 "$OUT/bench-quick.log" "$PY" tools/bench.py --quick --out-json "$OUT/bench-quick.json" $BENCH_ARGS ;;
    *) SUMMARY+=("$(printf '%-9s FAIL (unknown stage; known: build test test90 sanitize bench quick)' "$s")"); FAILED=1 ;;
  esac
done

echo
echo "================================ summary ($((SECONDS - T0)) s, logs in $OUT)"
printf '%s\n' "${SUMMARY[@]}"
for s in "${STAGES[@]}"; do
  case $s in
    sanitize) [ -f "$OUT/sanitizer.log" ] && "$PY" tools/sanitizer_summary.py "$OUT/sanitizer.log" ;;
    bench) [ -f "$OUT/bench.txt" ] && cat "$OUT/bench.txt" ;;
    quick) [ -f "$OUT/bench-quick.txt" ] && cat "$OUT/bench-quick.txt" ;;
  esac
done
exit $FAILED
