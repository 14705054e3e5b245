#!/usr/bin/env bash
# Quality guard: does a speed option change what training learns? Trains the default preset with
# and without the option, for each seed, the same steps on the same folder with 10% held out, and
# prints the held-out SWD curves and late losses side by side (benchmarks/curves.py). A speed
# option may be on by default only where its runs sit within the plain runs' seed-to-seed spread.
#
#   bash benchmarks/guard.sh DATA_DIR OUT_DIR [OPTION ARGS...]      # default option: --amp bf16
#
# Environment knobs: STEPS (1000), SEEDS ("0 1"), LIMIT (9000 images), SIZE (96), EVAL_EVERY (500),
# EVAL_N (900 per side), DEVICE (auto), PRESET (default), CAP (seconds per run at most, 0 = none),
# BASE (arguments both runs get, "--amp off": the preset's own amp may already be bf16, and the
# plain run must be fp32 for a bf16 guard to compare anything).
set -u
DATA=$(realpath "$1") OUT=$(realpath -m "$2")
shift 2
OPTION=("$@")
[ ${#OPTION[@]} -eq 0 ] && OPTION=(--amp bf16)
STEPS=${STEPS:-1000} SEEDS=${SEEDS:-0 1} LIMIT=${LIMIT:-9000} SIZE=${SIZE:-96}
EVAL_EVERY=${EVAL_EVERY:-500} EVAL_N=${EVAL_N:-900} DEVICE=${DEVICE:-auto} PRESET=${PRESET:-default}
CAP=${CAP:-0}
read -r -a BASE_ARGS <<<"${BASE---amp off}"
HERE=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$HERE/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
mkdir -p "$OUT"

train() {  # run name, then extra arguments
  local name=$1
  shift
  local start=$(date +%s)
  timeout --signal=TERM "${CAP/#0/infinity}" $PY -m animegen train --data "$DATA" --preset "$PRESET" \
    --limit "$LIMIT" --image-size "$SIZE" --holdout 0.1 --eval-every "$EVAL_EVERY" \
    --set train.eval_metrics=swd --set "train.eval_n=$EVAL_N" --set train.keep_checkpoints=1 \
    --set train.log_every=50 --epochs 100000 --max-steps "$STEPS" --device "$DEVICE" \
    --cache-dir "$OUT/cache" --run-dir "$OUT/$name" --quiet "${BASE_ARGS[@]}" "$@" >"$OUT/$name.txt" 2>&1
  echo "$name: exit $? after $(($(date +%s) - start)) s"
}

runs=()
echo "guard: ${OPTION[*]} against the plain $PRESET preset (both with: ${BASE_ARGS[*]}), $STEPS steps, seeds $SEEDS"
for seed in $SEEDS; do
  train "plain-s$seed" --seed "$seed"
  train "option-s$seed" --seed "$seed" "${OPTION[@]}"
  runs+=("$OUT/plain-s$seed" "$OUT/option-s$seed")
done
$PY "$HERE/benchmarks/curves.py" "${runs[@]}" | tee "$OUT/guard.txt"
