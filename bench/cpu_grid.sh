#!/bin/bash
# CPU-scale reproduction grid (issue: reproduce the paper's finding). Resumable: a finished run
# is skipped, an interrupted one continues with --resume, so the grid can be spread over sessions.
#
#   bench/cpu_grid.sh DATASET SPLIT "SEEDS" [EPOCHS] [extra osr-train flags...]
#   e.g. bench/cpu_grid.sh cifar10 0 "0 1 2" 30
#
# Runs (one shared CE teacher per split and seed, same architecture as the students):
# CE, CE+CutMix, CE+Mixup, KD+CutMix, AD+CutMix (r=0.75), AD+CutMix r=0, AD+Mixup.
# Results: runs/cpu/<dataset>-s<split>/<run>-seed<seed>/ and a copy of metrics.json + log.jsonl
# under bench/results/cpu-<dataset>-s<split>/ for bench/collect_results.py.
set -u
DATASET=${1:?dataset}; SPLIT=${2:?split}; SEEDS=${3:?seeds}; EPOCHS=${4:-30}
shift $(( $# < 4 ? $# : 4 ))
PY=${PYTHON:-python}
DATA=${OSR_DATA_ROOT:-../shared/datasets}
BASE=(--dataset "$DATASET" --split "$SPLIT" --data-root "$DATA" --arch classifier32 --width 0.25
      --max-train-per-class 1500 --epochs "$EPOCHS" --batch-size 128 "$@")
GROUP="$DATASET-s$SPLIT"
mkdir -p "runs/cpu/$GROUP" "bench/results/cpu-$GROUP"

finished() { [ -f "$1" ] && "$PY" -c "import json,sys; d=json.load(open('$1')); sys.exit(d['epoch'] != d['config']['epochs'])"; }

run() {  # name seed flags...   (a student whose results are committed is skipped; a teacher needs its checkpoint)
  local name=$1 seed=$2; shift 2
  local out="runs/cpu/$GROUP/$name-seed$seed" kept="bench/results/cpu-$GROUP/$name-seed$seed/metrics.json"
  if [ "$name" != ce ] && finished "$kept"; then
    echo "done already (committed): $kept"; return 0
  fi
  if finished "$out/metrics.json"; then
    echo "done already: $out"
  else
    local resume=(); [ -f "$out/checkpoint.pt" ] && resume=(--resume)
    echo "$(date +%T) start $out"
    "$PY" -m osr.train.cli "${BASE[@]}" --seed "$seed" --out "$out" "${resume[@]}" "$@" > "$out.log" 2>&1 \
      || { echo "FAILED $out (see $out.log)"; return 1; }
  fi
  mkdir -p "bench/results/cpu-$GROUP/$name-seed$seed"
  cp "$out/metrics.json" "$out/log.jsonl" "bench/results/cpu-$GROUP/$name-seed$seed/"
}

for seed in $SEEDS; do
  T="runs/cpu/$GROUP/ce-seed$seed"
  run ce "$seed" --method ce || continue
  run ce-cutmix "$seed" --method ce --mix cutmix
  run ad-cutmix "$seed" --method ad --mix cutmix --teacher "$T"
  run ce-mixup "$seed" --method ce --mix mixup
  run kd-cutmix "$seed" --method kd --mix cutmix --teacher "$T"
  run ad-cutmix-r0 "$seed" --method ad --mix cutmix --smoothing-r 0 --teacher "$T"
  run ad-mixup "$seed" --method ad --mix mixup --teacher "$T"
done
