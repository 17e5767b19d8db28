#!/bin/bash
# The bundled model's recipe: an ImageNet-pretrained EfficientNet-Lite0 teacher fine-tuned at 96 px
# on CIFAR-10 split 0, then EfficientNet-Lite0 students at the serving input (32 px images seen at
# 64 px inside the network) trained with CE, KD+CutMix and AD+CutMix from it.
# Resumable: a finished run is skipped, an interrupted one continues with --resume.
#
#   bench/pretrained_recipe.sh "SEEDS"        e.g. bench/pretrained_recipe.sh "0 1"
#
# Environment: PYTHON (.venv/bin/python), OSR_DATA_ROOT (../shared/datasets), RESULTS
# (bench/results), SLOTS (1: runs at the same time, each with THREADS torch threads),
# THREADS (2), TEACHER_EPOCHS (2), STUDENT_EPOCHS (2), TEACHER_SIZE (96), STUDENT_SIZE (64),
# MAX_PER_CLASS (3000 of the 4,500 training images per class; 0 = all), METHODS ("kd ad ce": the
# students per seed, in this order).
# TEACHER_EPOCHS/MAX_PER_CLASS other than 2/3000 name the teacher teacher-lite0-<size>px-e<E>-n<N>.
# Order: the teacher, then per seed KD, AD and CE students (the best candidate for serving first).
# Test metrics are computed once, after the last epoch (--eval-every 1000).
# Runs: runs/pretrained/cifar10-s0/<run>/; metrics.json + log.jsonl copied to
# $RESULTS/pretrained-cifar10-s0/<run>/.
set -u
SEEDS=${1:-"0 1"}
PY=${PYTHON:-.venv/bin/python}
DATA=${OSR_DATA_ROOT:-../shared/datasets}
RESULTS=${RESULTS:-bench/results}
SLOTS=${SLOTS:-1}; THREADS=${THREADS:-2}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-2}; STUDENT_EPOCHS=${STUDENT_EPOCHS:-2}
MAX_PER_CLASS=${MAX_PER_CLASS:-3000}
METHODS=${METHODS-"kd ad ce"}  # METHODS="" trains the teacher only
SUBSET=(); [ "$MAX_PER_CLASS" != 0 ] && SUBSET=(--max-train-per-class "$MAX_PER_CLASS")
TEACHER_SIZE=${TEACHER_SIZE:-96}; STUDENT_SIZE=${STUDENT_SIZE:-64}
RUNS=runs/pretrained/cifar10-s0
OUT=$RESULTS/pretrained-cifar10-s0
COMMON=(--dataset cifar10 --split 0 --data-root "$DATA" --arch efficientnet_lite0 --pretrained imagenet
        --lr 0.05 --backbone-lr-mult 0.5 --warmup-epochs 0.3 --batch-size 128 --eval-every 1000 "${SUBSET[@]}")
export OMP_NUM_THREADS=$THREADS

done_run() {  # finished: metrics.json holds the final epoch
  [ -f "$1/metrics.json" ] && "$PY" -c "import json,sys; m=json.load(open('$1/metrics.json')); sys.exit(m['epoch'] != m['config']['epochs'])"
}

train() {  # train RUN [flags...]: resumable, results copied
  local run=$1; shift
  local dir=$RUNS/$run
  if done_run "$dir"; then echo "skip $run (done)"; else
    local resume=(); [ -f "$dir/checkpoint.pt" ] && resume=(--resume)
    echo "$(date -u +%H:%M:%S) start $run"
    "$PY" -m osr.train.cli "${COMMON[@]}" "$@" --out "$dir" "${resume[@]}" > "$dir.log" 2>&1 \
      || { echo "FAILED $run (see $dir.log)"; return 1; }
    echo "$(date -u +%H:%M:%S) done $run"
  fi
  mkdir -p "$OUT/$run"; cp "$dir/metrics.json" "$dir/log.jsonl" "$OUT/$run/"
}

wait_slot() { while [ "$(jobs -rp | wc -l)" -ge "$SLOTS" ]; do sleep 5; done; }

mkdir -p "$RUNS"
TEACHER=teacher-lite0-${TEACHER_SIZE}px
# a teacher of another schedule or subset gets its own folder (the 2-epoch, 3,000-image one keeps its name)
TTAG=t$TEACHER_SIZE
if [ "$TEACHER_EPOCHS:$MAX_PER_CLASS" != 2:3000 ]; then
  TEACHER=$TEACHER-e$TEACHER_EPOCHS-n$MAX_PER_CLASS; TTAG=$TTAG-e$TEACHER_EPOCHS-n$MAX_PER_CLASS
fi
train "$TEACHER" --input-size "$TEACHER_SIZE" --epochs "$TEACHER_EPOCHS"
for seed in $SEEDS; do
  for method in $METHODS; do
    wait_slot
    if [ "$method" = ce ]; then
      train "ce-lite0-${STUDENT_SIZE}px-seed$seed" --input-size "$STUDENT_SIZE" --epochs "$STUDENT_EPOCHS" --seed "$seed" &
    else
      train "$method-cutmix-lite0-${STUDENT_SIZE}px-$TTAG-seed$seed" --input-size "$STUDENT_SIZE" \
        --epochs "$STUDENT_EPOCHS" --seed "$seed" --method "$method" --mix cutmix --teacher "$RUNS/$TEACHER" &
    fi
  done
done
wait
