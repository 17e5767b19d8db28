#!/bin/bash
# Open-set quality where users are (issue 21): fine-tuning recipes against frozen ImageNet features on
# small-data tasks (a few hundred training images per known class), each trained within the README
# quick start's budget on 2 CPU cores, then exported with osr-export, whose report carries the
# frozen-pretrained reference on the same images (osr.export.probe).
#
#   bench/small_data_recipes.sh "TASKS" "RECIPES"     e.g. bench/small_data_recipes.sh "quickstart cifar10-450 mnist-450" "old new"
#
# Tasks: quickstart (the README's folder demo: CIFAR-10 bird/cat/dog/ship, 450 train images each,
# written by bench/make_folder_demo.py), cifar10-450 and mnist-450 (split 0, 450 training images per
# known class, 500 test images per class). Recipes: old (the README quick start before this study:
# Lite0 fine-tuned 10 epochs at 96 px, max-logit), new (the same network exported with --score fused
# --knn-features pretrained: its max-logit and the frozen pretrained backbone's kNN similarity),
# auto (--score auto over the same candidates). Resumable: a finished run or export is skipped.
# Environment: PYTHON (.venv/bin/python), OSR_DATA_ROOT (../shared/datasets), THREADS (2), RUNS (runs/small-data),
# RESULTS (bench/results/small-data).
set -u
TASKS=${1:-"quickstart cifar10-450 mnist-450"}
RECIPES=${2:-"old new"}
PY=${PYTHON:-.venv/bin/python}
DATA=${OSR_DATA_ROOT:-../shared/datasets}
RUNS=${RUNS:-runs/small-data}
RESULTS=${RESULTS:-bench/results/small-data}
export OMP_NUM_THREADS=${THREADS:-2}
COMMON=(--arch efficientnet_lite0 --pretrained imagenet --warmup-epochs 0.3)

task_flags() {
  case $1 in
    quickstart)
      [ -d "$RUNS/quickstart-data/train" ] || "$PY" bench/make_folder_demo.py --data-root "$DATA" --out "$RUNS/quickstart-data" >/dev/null
      echo --dataset imagefolder --data-root "$RUNS/quickstart-data" ;;
    cifar10-450) echo --dataset cifar10 --split 0 --data-root "$DATA" --max-train-per-class 450 --max-test-per-class 500 ;;
    mnist-450) echo --dataset mnist --split 0 --data-root "$DATA" --max-train-per-class 450 --max-test-per-class 500 ;;
    *) echo "unknown task $1" >&2; exit 2 ;;
  esac
}

FT96="--input-size 96 --epochs 10 --lr 0.05 --backbone-lr-mult 0.5"
recipe_flags() {  # a name for the training run, "|", its training flags, "|", osr-export flags
  case $1 in
    old) echo "ft96|$FT96|" ;;  # the README quick start before this study: max-logit
    new) echo "ft96|$FT96|--score fused --knn-features pretrained --knn-k 5" ;;  # same network, fused with frozen kNN
    auto) echo "ft96|$FT96|--score auto --knn-features pretrained" ;;
    *) echo "unknown recipe $1" >&2; exit 2 ;;
  esac
}

mkdir -p "$RUNS" "$RESULTS"
for task in $TASKS; do
  read -r -a TF <<< "$(task_flags "$task")"
  for recipe in $RECIPES; do
    IFS="|" read -r trained train export <<< "$(recipe_flags "$recipe")"
    run=$RUNS/$task-$trained
    if [ ! -f "$run/metrics.json" ]; then
      resume=(); [ -f "$run/checkpoint.pt" ] && resume=(--resume)
      echo "$(date -u +%H:%M:%S) train $task $recipe"
      /usr/bin/time -f "%e" -o "$run.seconds" "$PY" -m osr.train.cli "${TF[@]}" "${COMMON[@]}" $train --out "$run" "${resume[@]}" \
        > "$run.log" 2>&1 || { echo "FAILED $run (see $run.log)"; continue; }
    fi
    if [ ! -f "$RESULTS/$task-$recipe/report.json" ]; then
      echo "$(date -u +%H:%M:%S) export $task $recipe"
      "$PY" -m osr.export.cli "$run" --repository "$RUNS/exports" --name "$task-$recipe" --force --version 1 $export \
        > "$RUNS/$task-$recipe.export.log" 2>&1 || { echo "FAILED export $task-$recipe (see its .export.log)"; continue; }
      mkdir -p "$RESULTS/$task-$recipe"
      cp "$RUNS/exports/$task-$recipe/1/report/report.json" "$RUNS/exports/$task-$recipe/1/report/report.md" \
         "$run/metrics.json" "$RESULTS/$task-$recipe/"
      cp "$run.seconds" "$RESULTS/$task-$recipe/train_seconds.txt" 2>/dev/null
    fi
  done
done
