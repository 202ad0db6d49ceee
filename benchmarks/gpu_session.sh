#!/usr/bin/env bash
# Every GPU job of nldsl in one script: one device call runs the stages named on the command line, each
# writing its log and JSON under $OUT/<stage>, each printing its table last. Stages:
#   check     every runtime block fwd+bwd in bf16 vs fp32/fp64, compiled, graph breaks (benchmarks/gpu_check.py)
#   tests     the GPU-marked pytest suite (pytest -m gpu tests/gpu)
#   train     issue 5's throughput table at seq 2048 x 16, all models next to the hand-written baseline
#   long      the same at seq 16384 x 2
#   generate  decode tokens/s at batch 1 and 32 next to the baseline's KV-cache decoding
#   compare   nldsl train on hope/titans/transformer.nl at one size (benchmarks/train_compare.py)
#   fused     one Titans memory layer: the fused Triton scan vs the torch path (benchmarks/fused_scan.py)
# Each stage's console is also kept in $OUT/<stage>.console (it comes back even when the call is cut short).
# Env: TORCH_MODE (torch.compile mode of the nldsl models for train/long, e.g. reduce-overhead), TESTS_TIMEOUT (seconds for tests), MODELS (comma list for train/long/generate), GEN_BUDGET (seconds for generate), GEN_ARGS (more throughput.py flags for generate, e.g. --sdpa no-cudnn), TESTS_K (pytest -k filter for tests), STEPS, BUDGET, CHECK_ARGS.
# Usage (on the GPU machine, from the repository root):  OUT=/tmp/out bash benchmarks/gpu_session.sh check train
# Python wheels the GPU image lacks (lark, pydantic, graphviz, fla) are installed from .whl/ when present.
set -uo pipefail
OUT=${OUT:-runs/gpu}
STEPS=${STEPS:-6}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
# without nldsl's own dependencies every model would silently fall back to benchmarks/lm.py's hand assembly
if ! python3 -c "import nldsl.build" 2>"$OUT/import.err"; then
  echo "error: nldsl does not import here ($(tail -1 "$OUT/import.err")); carry .whl (see the header) and run again"
  exit 3
fi
status=0
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(check train)
run_stage() {
  case $1 in
    check)    python3 benchmarks/gpu_check.py --no-tests ${CHECK_ARGS:-} --out "$OUT/check" ;;
    tests)    timeout "${TESTS_TIMEOUT:-900}" python3 -m pytest -m gpu -q -p no:cacheprovider tests/gpu ${TESTS_K:+-k "$TESTS_K"} ;;
    fused)    python3 benchmarks/fused_scan.py --out "$OUT/fused" ;;
    train)    python3 benchmarks/throughput.py ${MODELS:+--models "$MODELS"} --seqs 2048 --steps "$STEPS" --profile-max-ms 60000 \
                --budget-s "${BUDGET:-330}" ${TORCH_MODE:+--torch-mode "$TORCH_MODE"} --out "$OUT/train" ;;
    long)     python3 benchmarks/throughput.py ${MODELS:+--models "$MODELS"} --seqs 16384 --steps "$STEPS" --profile-max-ms 60000 \
                --budget-s "${BUDGET:-330}" ${TORCH_MODE:+--torch-mode "$TORCH_MODE"} --out "$OUT/long" ;;
    generate) python3 benchmarks/throughput.py --generate ${MODELS:+--models "$MODELS"} ${GEN_BUDGET:+--budget-s "$GEN_BUDGET"} ${GEN_ARGS:-} --out "$OUT/generate" ;;
    compare)  timeout "${COMPARE_TIMEOUT:-900}" python3 benchmarks/train_compare.py ${COMPARE_ARGS:-} --steps "${COMPARE_STEPS:-200}" --seq "${COMPARE_SEQ:-512}" \
                --batch "${COMPARE_BATCH:-8}" --quiet --json "$OUT/compare.json" --out /tmp/nldsl-compare ;;
    *) echo "unknown stage: $1 (check, tests, fused, train, long, generate, compare)"; return 2 ;;
  esac
}
for stage in "${stages[@]}"; do
  echo "=== stage $stage ($(date -u +%H:%M:%S))"
  run_stage "$stage" 2>&1 | tee "$OUT/$stage.console"  # the console of each stage comes back even if the call is cut
  rc=${PIPESTATUS[0]}; [ $rc -ne 0 ] && { echo "stage $stage exited with $rc"; status=$rc; }
done
exit $status
