#!/usr/bin/env bash
# The whole GPU measurement in one call: throughput against the reference (CUDA graphs and
# torch.compile included), torch.profiler tables of the default step eager and graphed, a quality guard
# (the graphed step against the eager one, same seeds and steps, held-out SWD). Everything it
# writes lands in OUT_DIR; each part stops at its own deadline so the whole stays inside BUDGET_S.
#
#   bash benchmarks/gpu.sh DATA_DIR REFERENCE_PY OUT_DIR [BUDGET_S]
#
# DATA_DIR: a folder of faces (the device tool carries at most ~60 MB: ~9,000 of the 96 px set).
# Environment knobs, for a dry run on a CPU: DEVICE (cuda), ITERS/WARMUP (timed/untimed
# throughput steps), LOG_EVERY, CONFIGS (throughput rows), ROW_TIMEOUT (seconds per row),
# GUARD_STEPS (steps per guard run), GUARD_CAP (seconds per guard run at most), SIZE (image size),
# EVAL_N, EVAL_EVERY, PROFILE_STEPS, CACHE (decoded-image cache, kept between calls). A dry run:
#   DEVICE=cpu ITERS=3 WARMUP=2 LOG_EVERY=1 GUARD_STEPS=20 EVAL_EVERY=10 EVAL_N=30 PROFILE_STEPS=2 \
#     bash benchmarks/gpu.sh DIR REF OUT 1500
set -u
DATA=$(realpath "$1") REF=$(realpath "$2") OUT=$(realpath "$3") BUDGET=${4:-480}
DEVICE=${DEVICE:-cuda} ITERS=${ITERS:-200} WARMUP=${WARMUP:-30} GUARD_STEPS=${GUARD_STEPS:-1000}
GUARD_CAP=${GUARD_CAP:-35} SIZE=${SIZE:-96} EVAL_N=${EVAL_N:-900} EVAL_EVERY=${EVAL_EVERY:-500}
LOG_EVERY=${LOG_EVERY:-25} ROW_TIMEOUT=${ROW_TIMEOUT:-90} PROFILE_STEPS=${PROFILE_STEPS:-20}
# Most wanted first: a row cut by the deadline is the least missed.
CONFIGS=${CONFIGS:-reference seed seed/cuda_graph default default/eager default/cudnn_benchmark=off \
default/cuda_graph=off default/amp=bf16 default/batch=256 default/compile default/compile+no-layout-opt \
seed/fused_adam=on seed/cudnn_benchmark}
HERE=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$HERE/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
CACHE=${CACHE:-/tmp/animegen-gpu-cache}
# A fresh scratch folder each call: a run dir left by an earlier call would be resumed, not retrained.
RUNS=$(mktemp -d "${TMPDIR:-/tmp}/animegen-gpu-runs.XXXXXX")
START=$(date +%s)
mkdir -p "$OUT" "$RUNS"
left() { echo $((BUDGET - ($(date +%s) - START))); }
say() { echo "== [$(($(date +%s) - START)) s] $*"; }

say "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 || true
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
nproc

# 1. Throughput: every row a separate process, the reference first (about 55% of the budget).
say "throughput (deadline $((BUDGET * 11 / 20)) s)"
timeout --signal=TERM $((BUDGET * 11 / 20)) $PY "$HERE/benchmarks/throughput.py" --data "$DATA" \
  --reference "$REF" --device "$DEVICE" --iters "$ITERS" --warmup "$WARMUP" --log-every "$LOG_EVERY" \
  --cache-dir "$CACHE" --timeout "$ROW_TIMEOUT" --json "$OUT/throughput.json" --workdir "$RUNS/throughput" \
  --configs $CONFIGS
say "throughput done"

# 2. Where a default-preset step's time goes on the device, eager and graphed: torch.profiler's
# top ops split by input shapes (one row per layer), and per step the wall time against the time
# the GPU spent in kernels.
for row in default/eager default/cuda_graph; do
  timeout --signal=TERM 50 $PY "$HERE/benchmarks/throughput.py" --data "$DATA" --device "$DEVICE" \
    --cache-dir "$CACHE" --profile "$row" --profile-steps "$PROFILE_STEPS" --by-shape 2>&1 | tail -36
done
say "profile done"

# 3. Quality guard: the graphed step against the eager one, two seeds each, the same steps and
# held-out 10%, held-out SWD every EVAL_EVERY steps.
train() {  # name, then extra arguments
  local name=$1
  shift
  local limit=$(($(left) - 15 < GUARD_CAP ? $(left) - 15 : GUARD_CAP))
  if [ "$limit" -lt 10 ]; then
    echo "$name: skipped (budget spent)"
    return
  fi
  timeout --signal=TERM "$limit" $PY -m animegen train --data "$DATA" --preset default \
    --image-size "$SIZE" --holdout 0.1 --eval-every "$EVAL_EVERY" --set train.eval_metrics=swd \
    --set "train.eval_n=$EVAL_N" --set train.keep_checkpoints=1 --set train.log_every=50 \
    --epochs 100000 --max-steps "$GUARD_STEPS" --device "$DEVICE" --cache-dir "$CACHE" \
    --run-dir "$RUNS/$name" --quiet "$@" >"$RUNS/$name.txt" 2>&1
  echo "$name: exit $? ($(grep -c '"kind": "eval"' "$RUNS/$name/log.jsonl" 2>/dev/null) evaluations)"
}
GUARD=(eager-s0 graph-s0 eager-s1 graph-s1)
say "quality guard, $GUARD_STEPS steps each"
EAGER=(--no-cuda-graph --set train.cudnn_benchmark=off)  # the default preset before CUDA graphs
train eager-s0 --seed 0 "${EAGER[@]}"
train graph-s0 --seed 0 --cuda-graph
train eager-s1 --seed 1 "${EAGER[@]}"
train graph-s1 --seed 1 --cuda-graph
$PY "$HERE/benchmarks/curves.py" "${GUARD[@]/#/$RUNS/}" | tee "$OUT/guard.txt"

# 4. Pack the logs, consoles and each run's last sample grid (no weights).
say "packing"
for run in "$RUNS"/*/ "$RUNS"/throughput/*/; do
  last=$(ls "$run"samples/epoch_*.png 2>/dev/null | tail -1)
  [ -n "$last" ] && cp "$last" "${run}last_$(basename "$last")"
done
(cd "$RUNS" && tar czf "$OUT/runs.tar.gz" --exclude='*.safetensors' --exclude=samples --exclude='*.npy' \
  --exclude=cache --exclude=tensorboard .)
rm -rf "$RUNS"
ls -la "$OUT"
say "done"
