#!/usr/bin/env bash
# The whole GPU measurement in one call: throughput against the reference, a bf16-vs-fp32 quality
# guard, default vs modern at the same steps, then a longer run of the better one with its
# held-out SWD curve. Everything it writes lands in OUT_DIR; each part stops at its own deadline
# so the whole stays inside BUDGET_S seconds.
#
#   bash benchmarks/gpu.sh DATA_DIR REFERENCE_PY OUT_DIR [BUDGET_S]
#
# DATA_DIR: a folder of faces (the device tool carries at most ~60 MB: ~9,000 of the 96 px set).
# Environment knobs, for a dry run on a CPU: DEVICE (cuda), ITERS/WARMUP (timed/untimed
# throughput steps), LOG_EVERY, CONFIGS (throughput rows), GUARD_STEPS (steps per guard run),
# GUARD_CAP (seconds per guard run at most), SIZE (image size), EVAL_N, EVAL_EVERY.
set -u
DATA=$(realpath "$1") REF=$(realpath "$2") OUT=$(realpath "$3") BUDGET=${4:-540}
DEVICE=${DEVICE:-cuda} ITERS=${ITERS:-300} WARMUP=${WARMUP:-50} GUARD_STEPS=${GUARD_STEPS:-2000}
GUARD_CAP=${GUARD_CAP:-50} SIZE=${SIZE:-96} EVAL_N=${EVAL_N:-900} EVAL_EVERY=${EVAL_EVERY:-500} LOG_EVERY=${LOG_EVERY:-25}
CONFIGS=${CONFIGS:-reference seed default default/amp=bf16 default/batch=256 \
default/compile+contiguous default/cudagraphs+contiguous default/compile}
HERE=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$HERE/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
CACHE=/tmp/animegen-gpu-cache
RUNS=/tmp/animegen-gpu-runs
START=$(date +%s)
mkdir -p "$OUT" "$RUNS"
left() { echo $((BUDGET - ($(date +%s) - START))); }
say() { echo "== [$(($(date +%s) - START)) s] $*"; }

say "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 || true
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
nproc

# 1. Throughput: every row a separate process, the reference first (about 40% of the budget).
say "throughput (deadline $((BUDGET * 2 / 5)) s)"
timeout --signal=TERM $((BUDGET * 2 / 5)) $PY "$HERE/benchmarks/throughput.py" --data "$DATA" \
  --reference "$REF" --device "$DEVICE" --iters "$ITERS" --warmup "$WARMUP" --log-every "$LOG_EVERY" \
  --cache-dir "$CACHE" --timeout 90 --json "$RUNS/throughput.json" --workdir "$RUNS/throughput" \
  --configs $CONFIGS
say "throughput done"

# Where a default-preset step's time goes on the device: torch.profiler, top 15 ops by device time.
timeout --signal=TERM 60 $PY "$HERE/benchmarks/throughput.py" --data "$DATA" --device "$DEVICE" \
  --cache-dir "$CACHE" --profile default --profile-steps 20 2>&1 | tail -22

# 2. Same steps, same held-out 10%: default fp32 x2 seeds, default bf16 x2 seeds, modern bf16.
train() {  # name, then extra arguments
  local name=$1
  shift
  local limit=$(($(left) - 10 < GUARD_CAP ? $(left) - 10 : GUARD_CAP))
  if [ "$limit" -lt 10 ]; then
    echo "$name: skipped (budget spent)"
    return
  fi
  timeout --signal=TERM "$limit" $PY -m animegen train --data "$DATA" \
    --image-size "$SIZE" --holdout 0.1 --eval-every "$EVAL_EVERY" --set train.eval_metrics=swd \
    --set "train.eval_n=$EVAL_N" --set train.keep_checkpoints=1 --set train.log_every=50 \
    --epochs 100000 --device "$DEVICE" --cache-dir "$CACHE" --run-dir "$RUNS/$name" --quiet "$@" \
    >"$RUNS/$name.txt" 2>&1
  echo "$name: exit $? ($(grep -c '"kind": "eval"' "$RUNS/$name/log.jsonl" 2>/dev/null) evaluations)"
}
GUARD=(default-fp32-s0 default-fp32-s1 default-bf16-s0 default-bf16-s1 modern-s0)
say "quality guard and preset comparison, $GUARD_STEPS steps each"
train default-fp32-s0 --preset default --amp off --seed 0 --max-steps "$GUARD_STEPS"
train default-fp32-s1 --preset default --amp off --seed 1 --max-steps "$GUARD_STEPS"
train default-bf16-s0 --preset default --amp bf16 --seed 0 --max-steps "$GUARD_STEPS"
train default-bf16-s1 --preset default --amp bf16 --seed 1 --max-steps "$GUARD_STEPS"
train modern-s0 --preset modern --seed 0 --max-steps "$GUARD_STEPS"
$PY "$HERE/benchmarks/curves.py" "${GUARD[@]/#/$RUNS/}" | tee "$RUNS/guard.txt"

# 3. The better of default-bf16-s0 and modern-s0 (final held-out SWD) trains on until the budget
# is spent, minus time to pack; SIGTERM makes it checkpoint and stop.
BEST=$($PY "$HERE/benchmarks/curves.py" --pick "$RUNS/default-bf16-s0" "$RUNS/modern-s0")
PRESET=${BEST%%-*}
LONG=$(($(left) - 45))
if [ "$LONG" -lt 30 ]; then
  LONG=0
  echo "long run skipped: budget spent"
fi
say "long run: preset $PRESET for $LONG s"
[ "$LONG" -gt 0 ] && timeout --signal=TERM "$LONG" $PY -m animegen train --data "$DATA" --preset "$PRESET" \
  --image-size "$SIZE" --holdout 0.1 --eval-every $((EVAL_EVERY * 2)) --set train.eval_metrics=swd \
  --set "train.eval_n=$EVAL_N" --set train.keep_checkpoints=1 --set train.log_every=100 \
  --epochs 100000 --device "$DEVICE" --cache-dir "$CACHE" --run-dir "$RUNS/long" --quiet \
  >"$RUNS/long.txt" 2>&1
echo "long run: exit $?"
$PY "$HERE/benchmarks/curves.py" "$RUNS/long" | tee "$RUNS/long.txt"

# 4. Pack: the generator of the long run's best checkpoint (for FID on another machine) in
# 15 MB parts, and the logs, grids and plots.
say "packing"
$PY - "$RUNS/long/checkpoints/best.safetensors" "$OUT/long_G.safetensors" <<'EOF'
import sys
from animegen.training import checkpoint as ckpt
tensors, meta = ckpt.read_checkpoint(sys.argv[1])
prefix = "G_ema" if any(k.startswith("G_ema.") for k in tensors) else "G"
g = {"G." + k: v for k, v in ckpt.unpack_state_dict(prefix, tensors).items()}
keep = {k: meta[k] for k in ("config", "epoch", "step", "iteration", "epochs_done", "best", "wall_time")}
ckpt.save_checkpoint(sys.argv[2], g, {"kind": "generator", "source": prefix, **keep})
print(f"generator ({prefix}) of iteration {meta['iteration']}: {sys.argv[2]}")
EOF
if [ -f "$OUT/long_G.safetensors" ]; then
  split -b 15M -d "$OUT/long_G.safetensors" "$OUT/long_G.part" && rm "$OUT/long_G.safetensors"
fi
for run in "$RUNS"/*/ "$RUNS"/throughput/*/; do  # keep each run's last sample grid only
  last=$(ls "$run"samples/epoch_*.png 2>/dev/null | tail -1)
  [ -n "$last" ] && cp "$last" "${run}last_$(basename "$last")"
done
(cd "$RUNS" && tar czf "$OUT/runs.tar.gz" --exclude='*.safetensors' --exclude=samples --exclude='*.npy' \
  --exclude=cache --exclude=tensorboard .)
ls -la "$OUT"
say "done"
