#!/bin/bash
# GPU-scale reproduction at the paper's setting, one command on a GPU host (run from the
# repository root; nothing to install beyond torch + torchvision + numpy + Pillow + scikit-learn):
# ResNet-50 CE teacher, ResNet-18 students (CIFAR stem), every training image, the seven methods
# of bench/cpu_grid.sh, on Tiny-ImageNet 20/180 at 64 px and CIFAR-10 6/4 at 32 px, split 0.
#
#   bench/gpu_paper_grid.sh DATA_ROOT RESULTS_DIR [EPOCHS] ["SEEDS"] ["DATASETS"] [extra osr-train flags...]
#   bench/gpu_paper_grid.sh ../shared/datasets bench/results 200          # the paper's budget
#   bench/gpu_paper_grid.sh .carry "$OUT/results" 15 "0" tiny_imagenet     # sized for a 15-minute lease
#
# Results: RESULTS_DIR/gpu-paper-<dataset>-s0/<run>-seed<seed>/ (bench/collect_results.py reads them).
# The runs of one seed train at the same time on the one GPU (SLOTS=6 students after the teacher).
# Not run yet at 200 epochs: no lease so far was long enough (docs/results.md).
set -u
DATA=${1:?data root}; OUT=${2:?results dir}; EPOCHS=${3:-200}; SEEDS=${4:-0}
DATASETS=${5:-tiny_imagenet cifar10}
shift $(( $# < 5 ? $# : 5 ))
HERE=$(cd "$(dirname "$0")" && pwd)
export TAG=${TAG:-gpu-paper} ARCH=resnet18 WIDTH=1 TEACHER_ARCH=resnet50 TEACHER_WIDTH=1 MAX_PER_CLASS=0
for dataset in $DATASETS; do
  bash "$HERE/device_grid.sh" "$DATA" "$OUT" "$dataset" 0 "$SEEDS" "$EPOCHS" "$@"
done
