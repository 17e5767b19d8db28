#!/bin/bash
# GPU-scale reproduction on CIFAR-10 split 0, sized for a ~9-minute lease of one H100/H200.
# Phase 1 (concurrent): ResNet-18 CE teacher, and the classifier32 baselines CE, CE+CutMix, CE+Mixup.
# Phase 2 (concurrent): classifier32 students distilled from the teacher: AD+CutMix (r=0.75),
#   AD+CutMix r=0 (the released code's variant), AD+Mixup, symmetric KD+CutMix.
# Usage: bench/gpu_cifar10_split0.sh DATA_ROOT OUT_DIR [EPOCHS] [DEVICE] [WORKERS] [EXTRA ARGS...]
set -u
DATA=${1:?data root}; OUT=${2:?out dir}; EPOCHS=${3:-40}; DEVICE=${4:-auto}; WORKERS=${5:-3}
shift $(( $# < 5 ? $# : 5 ))
PY=${PYTHON:-python3}
COMMON=(--batch-augment --dataset cifar10 --split 0 --data-root "$DATA" --epochs "$EPOCHS" --device "$DEVICE" --workers "$WORKERS" --seed 0 "$@")
S=(--arch classifier32 --width 1.0)
mkdir -p "$OUT"
train() { name=$1; shift; timeout "${LIMIT:-100000}" "$PY" -m osr.train.cli "${COMMON[@]}" --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1; echo "$name rc=$? $(date +%T)"; }
t0=$(date +%s)
LIMIT=${PHASE1_LIMIT:-100000}  # a time guard for short leases: phase 2 needs the teacher
train teacher-resnet18-ce --arch resnet18 --width 1.0 &
train c32-ce "${S[@]}" &
train c32-ce-cutmix "${S[@]}" --mix cutmix &
train c32-ce-mixup "${S[@]}" --mix mixup &
wait
echo "phase 1: $(( $(date +%s) - t0 )) s"
T="$OUT/teacher-resnet18-ce"
LIMIT=100000
train c32-ad-cutmix "${S[@]}" --method ad --mix cutmix --teacher "$T" &
train c32-ad-cutmix-r0 "${S[@]}" --method ad --mix cutmix --smoothing-r 0 --teacher "$T" &
train c32-ad-mixup "${S[@]}" --method ad --mix mixup --teacher "$T" &
train c32-kd-cutmix "${S[@]}" --method kd --mix cutmix --teacher "$T" &
wait
echo "total: $(( $(date +%s) - t0 )) s"
