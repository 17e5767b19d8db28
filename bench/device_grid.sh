#!/bin/bash
# Run bench/cpu_grid.sh on a lent GPU host without installing the project: the seeds run at the
# same time (one process per run, SLOTS students per seed), with --batch-augment so the ~2 CPU
# cores such hosts give a process do not starve the GPU.
#
#   bench/device_grid.sh DATA_ROOT RESULTS_DIR DATASET SPLIT "SEEDS" EPOCHS [extra osr-train flags...]
#   e.g. (on the device, from the repository root)
#   bench/device_grid.sh .carry "$OUT/results" cifar10 0 "0 1 2" 30
#
# The repository root holds ./osr (package root only), which would shadow the package when Python
# starts there, so the package is assembled from symlinks under /tmp/osr-pkg and the runs happen
# in /tmp/osr-grid. Results land in RESULTS_DIR/<TAG>-<dataset>-s<split>/ (TAG: gpu-batchaug).
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
DATA=$(cd "${1:?data root}" && pwd); RESULTS=$(mkdir -p "${2:?results dir}" && cd "$2" && pwd)
DATASET=${3:?dataset}; SPLIT=${4:?split}; SEEDS=${5:?seeds}; EPOCHS=${6:?epochs}
shift 6

echo "host: $(nproc) CPUs usable, $(python3 -c 'import os; print(len(os.sched_getaffinity(0)))') in affinity;" \
     "cgroup cpu.max: $(cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo n/a)"
PKG=/tmp/osr-pkg
mkdir -p "$PKG/osr" /tmp/osr-grid
cp "$REPO"/osr/*.py "$PKG/osr/"
for sub in train export serve; do ln -sfn "$REPO/$sub" "$PKG/osr/$sub"; done
export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}" OSR_DATA_ROOT="$DATA" RESULTS TAG=${TAG:-gpu-batchaug}
export PYTHON=${PYTHON:-python3} SLOTS=${SLOTS:-6} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'

cd /tmp/osr-grid
t0=$(date +%s)
for seed in $SEEDS; do
  bash "$REPO/bench/cpu_grid.sh" "$DATASET" "$SPLIT" "$seed" "$EPOCHS" --batch-augment --device auto "$@" \
    > "$RESULTS/grid-$DATASET-s$SPLIT-seed$seed.log" 2>&1 &
done
wait
echo "grid $DATASET split $SPLIT seeds [$SEEDS] $EPOCHS epochs: $(( $(date +%s) - t0 )) s"
cp runs/*/*/*.log "$RESULTS/" 2>/dev/null
