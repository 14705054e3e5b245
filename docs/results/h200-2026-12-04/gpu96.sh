#!/usr/bin/env bash
# H200: the modern preset on 10,000 faces at 96 px, two variants at once, each snapshotted at
# M1 and M2 minutes of training; the snapshots come back as fp16 generators, scored at home.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
DATA=${DATA:-bench_data/train96} DEVICE=${DEVICE:-cuda} M1=${M1:-3.5} M2=${M2:-7} SIZE=${SIZE:-96} W=${W:-1}
C=/tmp/animegen-gpu-cache R=${R:-$(mktemp -d)} S=$(date +%s) OUT=${OUT:-/tmp/out}
mkdir -p $R $OUT
say() { echo "== [$(( $(date +%s) - S )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tail -1
python3 -c "import torch; print('torch', torch.__version__)"
python3 -m animegen train --data $DATA --preset modern --image-size $SIZE --max-steps 2 \
  --device $DEVICE --cache-dir $C --run-dir $R/fill --quiet > $R/fill.txt 2>&1; say "cache fill exit $?"
run() { n=$1; shift
  python3 -m animegen train --data $DATA --preset modern --image-size $SIZE --epochs 100000 \
    --set model.width=$W --batch-size 64 --set train.log_every=100 --set train.keep_checkpoints=1 \
    --max-minutes $M1 --device $DEVICE --cache-dir $C --run-dir $R/$n "$@" > $R/$n.txt 2>&1
  echo "$n: stage 1 exit $?"; python3 benchmarks/slim_generator.py $R/$n $OUT/${n}_m1.safetensors
  python3 -m animegen train --resume $R/$n --max-minutes $M2 --quiet >> $R/$n.txt 2>&1
  echo "$n: stage 2 exit $?"; python3 benchmarks/slim_generator.py $R/$n $OUT/${n}_m2.safetensors
  python3 -m animegen generate $R/$n -n 64 --grid $OUT/${n}_grid.png --device $DEVICE > /dev/null 2>&1; }
run plain --set train.cuda_graph=auto &
run diffaug --set optim.augment=color,translation &
wait
say "trained"
for n in plain diffaug; do
  echo "--- $n"; grep -m3 -i "device\|graph\|warn" $R/$n.txt | cut -c1-300; tail -3 $R/$n.txt | cut -c1-300
  python3 - $R/$n/log.jsonl <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss_D"' in l]
for r in rows[:: max(1, len(rows) // 8)] + rows[-1:]:
    print({k: r[k] for k in ("iteration", "epoch", "loss_D", "loss_G", "D_x", "D_G_z", "images_per_s", "wall_time") if k in r})
PY
done
tar czf $OUT/logs.tgz -C $R plain/log.jsonl diffaug/log.jsonl plain.txt diffaug.txt plain/config.json 2>/dev/null
say "done"; ls -la $OUT
