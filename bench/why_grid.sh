#!/bin/bash
# Follow-up runs for "why does AD not recover AUROC here?" (docs/results.md), CIFAR-10 split 0,
# classifier32 width 0.25, seed 0, the CPU grid's settings unless stated. Resumable like cpu_grid.sh.
#
#   bench/why_grid.sh logit-scale   # AD+CutMix plus a two-hot CE on every mixed sample (--ad-mixed-ce 1),
#                                   # teacher = the CPU grid's CE run (runs/cpu/cifar10-s0/ce-seed0)
#   bench/why_grid.sh long          # 500 images per class for 60 epochs (two thirds of the grid's
#                                   # 1,500 x 30 steps, each image seen twice as often): CE, CE+CutMix,
#                                   # AD+CutMix with that CE as teacher
set -u
PY=${PYTHON:-python}
DATA=${OSR_DATA_ROOT:-../shared/datasets}
BASE=(--dataset cifar10 --split 0 --data-root "$DATA" --arch classifier32 --width 0.25 --batch-size 128 --seed 0)

run() {  # group name flags...
  local group=$1 name=$2; shift 2
  local out="runs/why/$group/$name" kept="bench/results/why-$group-cifar10-s0/$name"
  if [ -f "$kept/metrics.json" ]; then echo "done already (committed): $kept"; return 0; fi
  local resume=(); [ -f "$out/checkpoint.pt" ] && resume=(--resume)
  mkdir -p "$(dirname "$out")"
  echo "$(date +%T) start $out"
  "$PY" -m osr.train.cli "${BASE[@]}" --out "$out" "${resume[@]}" "$@" > "$out.log" 2>&1 \
    || { echo "FAILED $out (see $out.log)"; return 1; }
  mkdir -p "$kept" && cp "$out/metrics.json" "$out/log.jsonl" "$kept/"
  echo "$(date +%T) done $out"
}

case ${1:?logit-scale or long} in
  logit-scale)
    run logit-scale ad-cutmix-mixedce1-seed0 --max-train-per-class 1500 --epochs 30 --method ad --mix cutmix \
      --ad-mixed-ce 1 --teacher runs/cpu/cifar10-s0/ce-seed0 ;;
  long)
    L=(--max-train-per-class 500 --epochs 60 --eval-every 10)
    run long ce-seed0 "${L[@]}" --method ce || exit 1
    run long ce-cutmix-seed0 "${L[@]}" --method ce --mix cutmix
    run long ad-cutmix-seed0 "${L[@]}" --method ad --mix cutmix --teacher runs/why/long/ce-seed0 ;;
  *) echo "unknown experiment $1" >&2; exit 2 ;;
esac
