#!/bin/bash
# CPU-scale reproduction grid (issue: reproduce the paper's finding). Resumable: a finished run
# is skipped, an interrupted one continues with --resume, so the grid can be spread over sessions.
#
#   bench/cpu_grid.sh DATASET SPLIT "SEEDS" [EPOCHS] [extra osr-train flags...]
#   e.g. bench/cpu_grid.sh cifar10 0 "0 1 2" 30
#
# Runs (one shared CE teacher per split and seed): CE, CE+CutMix, CE+Mixup, KD+CutMix,
# AD+CutMix (r=0.75), AD+CutMix r=0, AD+Mixup. The teacher is the CE run itself when it has the
# students' architecture (the CPU setting), else its own run "teacher-<arch>" (the paper's
# ResNet-50 teacher for ResNet-18 students: TEACHER_ARCH=resnet50 ARCH=resnet18).
# Results: runs/<TAG>/<dataset>-s<split>/<run>-seed<seed>/ and a copy of metrics.json + log.jsonl
# under $RESULTS/<TAG>-<dataset>-s<split>/ for bench/collect_results.py.
#
# Environment: PYTHON (python), OSR_DATA_ROOT (../shared/datasets), TAG (cpu; name the results
# group, e.g. gpu-batchaug when the same grid runs with --batch-augment --device cuda),
# RESULTS (bench/results), SLOTS (1: students trained at the same time once the teacher is done),
# ARCH (classifier32), WIDTH (0.25), MAX_PER_CLASS (1500; 0 = every training image),
# TEACHER_ARCH / TEACHER_WIDTH (the students' by default).
set -u
DATASET=${1:?dataset}; SPLIT=${2:?split}; SEEDS=${3:?seeds}; EPOCHS=${4:-30}
shift $(( $# < 4 ? $# : 4 ))
PY=${PYTHON:-python}
DATA=${OSR_DATA_ROOT:-../shared/datasets}
ARCH=${ARCH:-classifier32}; WIDTH=${WIDTH:-0.25}; MAX_PER_CLASS=${MAX_PER_CLASS:-1500}
TEACHER_ARCH=${TEACHER_ARCH:-$ARCH}; TEACHER_WIDTH=${TEACHER_WIDTH:-$WIDTH}
SUBSET=(); [ "$MAX_PER_CLASS" != 0 ] && SUBSET=(--max-train-per-class "$MAX_PER_CLASS")
BASE=(--dataset "$DATASET" --split "$SPLIT" --data-root "$DATA" --arch "$ARCH" --width "$WIDTH"
      "${SUBSET[@]}" --epochs "$EPOCHS" --batch-size 128 "$@")
TEACHER=ce; [ "$TEACHER_ARCH/$TEACHER_WIDTH" != "$ARCH/$WIDTH" ] && TEACHER="teacher-$TEACHER_ARCH"
TAG=${TAG:-cpu}; RESULTS=${RESULTS:-bench/results}; SLOTS=${SLOTS:-1}
GROUP="$DATASET-s$SPLIT"
RUNS="runs/$TAG/$GROUP" KEPT="$RESULTS/$TAG-$GROUP"
mkdir -p "$RUNS" "$KEPT"

finished() { [ -f "$1" ] && "$PY" -c "import json,sys; d=json.load(open('$1')); sys.exit(d['epoch'] != d['config']['epochs'])"; }

run() {  # name seed flags...   (a student whose results are committed is skipped; a teacher needs its checkpoint)
  local name=$1 seed=$2; shift 2
  local out="$RUNS/$name-seed$seed" kept="$KEPT/$name-seed$seed/metrics.json"
  if [ "$name" != "$TEACHER" ] && finished "$kept"; then
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
  mkdir -p "$KEPT/$name-seed$seed"
  cp "$out/metrics.json" "$out/log.jsonl" "$KEPT/$name-seed$seed/"
}

student() {  # run in the background once fewer than SLOTS students are running
  while [ "$(jobs -rp | wc -l)" -ge "$SLOTS" ]; do wait -n; done
  run "$@" &
}

for seed in $SEEDS; do
  T="$RUNS/$TEACHER-seed$seed"
  if [ "$TEACHER" = ce ]; then
    run ce "$seed" --method ce || continue
  else
    run "$TEACHER" "$seed" --method ce --arch "$TEACHER_ARCH" --width "$TEACHER_WIDTH" || continue
    student ce "$seed" --method ce
  fi
  student ce-cutmix "$seed" --method ce --mix cutmix
  student ad-cutmix "$seed" --method ad --mix cutmix --teacher "$T"
  student ce-mixup "$seed" --method ce --mix mixup
  student kd-cutmix "$seed" --method kd --mix cutmix --teacher "$T"
  student ad-cutmix-r0 "$seed" --method ad --mix cutmix --smoothing-r 0 --teacher "$T"
  student ad-mixup "$seed" --method ad --mix mixup --teacher "$T"
  wait
done
