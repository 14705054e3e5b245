#!/usr/bin/env bash
# GPU smoke: do the untried paths run at all? Parallel, short; timings not meaningful.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda} STEPS=${STEPS:-60} LIM=${LIM:-100}
C=/tmp/animegen-gpu-cache R=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tail -1
python3 -c "import torch; print('torch', torch.__version__)"
# fill the cache once, before the parallel runs race for it
t0=$(date +%s)
python3 -m animegen train --data bench_data/faces --preset default --max-steps 2 --device $DEVICE \
  --cache-dir $C --run-dir $R/fill --quiet > $R/fill.txt 2>&1; echo "fill: exit $? in $(( $(date +%s) - t0 )) s"; tail -2 $R/fill.txt
run() { n=$1; shift; s=$(date +%s)
  ANIMEGEN_DEBUG=1 timeout $LIM python3 -m animegen train --data bench_data/faces --max-steps $STEPS --device $DEVICE \
    --cache-dir $C --run-dir $R/$n --quiet --set train.log_every=1 "$@" > $R/$n.txt 2>&1
  echo "$n: exit $? in $(( $(date +%s) - s )) s"; }
run graph-default --preset default --cuda-graph &
run graph-seed --preset seed --cuda-graph &
run graph-bf16 --preset default --cuda-graph --amp bf16 &
run compile --preset default --compile default &
TORCHINDUCTOR_LAYOUT_OPTIMIZATION=0 run compile-nolayout --preset default --compile default &
wait
for n in graph-default graph-seed graph-bf16 compile compile-nolayout; do
  echo "--- $n"; tail -4 $R/$n.txt | cut -c1-600
  python3 - $R/$n/log.jsonl <<'PY' 2>/dev/null
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
it = [r for r in rows if "wall_time" in r and "iteration" in r]
if len(it) > 20:
    a, b = it[10], it[-1]
    print(f"steps {a['iteration']}..{b['iteration']}: {(b['wall_time']-a['wall_time'])/(b['iteration']-a['iteration'])*1000:.2f} ms/step (parallel runs)",
          "first loss", it[0].get("loss_D"), it[0].get("loss_G"), "last", it[-1].get("loss_D"), it[-1].get("loss_G"))
PY
done
