#!/usr/bin/env bash
# Second GPU call: (1) quality guard, eager step vs the new default (CUDA graph + cuDNN autotuner),
# seeds 0-3 in parallel, plus a reduce-overhead compile smoke; (2) throughput: reference, new default, old eager default.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda} STEPS=${STEPS:-1000} EVERY=${EVERY:-500} N=${N:-900} CAP=${CAP:-170}
ITERS=${ITERS:-200} WARMUP=${WARMUP:-30} TP=${TP:-120}
C=/tmp/animegen-gpu-cache R=$(mktemp -d) S=$(date +%s)
say() { echo "== [$(( $(date +%s) - S )) s] $*"; }
python3 -m animegen train --data bench_data/faces --preset default --max-steps 2 --device $DEVICE \
  --cache-dir $C --run-dir $R/fill --quiet > $R/fill.txt 2>&1; say "cache fill exit $?"
g() { n=$1; shift
  OMP_NUM_THREADS=2 timeout $CAP python3 -m animegen train --data bench_data/faces --preset default --image-size 96 \
    --holdout 0.1 --eval-every $EVERY --set train.eval_metrics=swd --set train.eval_n=$N \
    --set train.keep_checkpoints=1 --set train.log_every=50 --epochs 100000 --max-steps $STEPS \
    --device $DEVICE --cache-dir $C --run-dir $R/$n "$@" > $R/$n.txt 2>&1
  echo "$n: exit $? ($(grep -c '"kind": "eval"' $R/$n/log.jsonl 2>/dev/null) evals) $(grep -m1 -o 'CUDA graph[^,]*\|cuDNN autotuner' $R/$n.txt | tr '\n' ' ')"; }
for s in 0 1 2 3; do
  g eager-s$s --seed $s --no-cuda-graph --set train.cudnn_benchmark=off &
  g default-s$s --seed $s &
done
( ANIMEGEN_DEBUG=1 timeout $CAP python3 -m animegen train --data bench_data/faces --preset default --max-steps 60 \
    --compile reduce-overhead --device $DEVICE --cache-dir $C --run-dir $R/ro --quiet --set train.log_every=1 > $R/ro.txt 2>&1
  echo "compile reduce-overhead: exit $?"; tail -25 $R/ro.txt | cut -c1-400 ) &
wait
say "guard done"
head -3 $R/default-s0.txt
python3 benchmarks/curves.py $R/eager-s{0,1,2,3} $R/default-s{0,1,2,3} | tee $OUT/guard2.txt
tail -3 $R/ro/log.jsonl 2>/dev/null | cut -c1-200
left=$(( ${BUDGET:-320} - ($(date +%s) - S) - 5 ))
say "throughput, deadline ${left} s"
timeout $left python3 benchmarks/throughput.py --data bench_data/faces --reference bench_data/seed_dcgan.py \
  --device $DEVICE --iters $ITERS --warmup $WARMUP --log-every 25 --cache-dir $C --timeout $TP \
  --json $OUT/throughput2.json --workdir $R/tp --configs reference default default/eager
say "done"
