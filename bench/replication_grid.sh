#!/bin/bash
# Issue 24: the replication of the paper's claim as registered in docs/results.md on 2026-12-08 ("The
# paper's claim, replicated"), in one resumable command. Every run goes through bench/regime_search.sh
# (same setting, folders, skip and resume rules as the ablation grid of issue 11).
#
#   bench/replication_grid.sh run        # the whole design: LANES lanes (2), one core each, one queue
#   bench/replication_grid.sh summary    # the tables and the registered family's tests so far
#   bench/replication_grid.sh jobs       # the queue, in order
#   e.g. setsid nohup bench/replication_grid.sh run > runs/replication.log 2>&1 &
#
# The design (SETTING resnet18:0.25:150:200, FLAGS "--randaugment false --batch-size 32", SEEDS 0 1 2):
#   - subsets 1 and 2 (--subset-seed, SUBSETS "1 2"): each its own CE teacher as in the grid (ResNet-18
#     w0.5, the subset's 150 images per class, 200 epochs, seed 0) and the students ce, ce-cutmix,
#     kd-cutmix, ad-cutmix (released: learnable target raw, r 0.75), ad-cutmix-target-mixed at every seed;
#   - the KD control on subset 0: the 500-image teacher (ResNet-18 w0.25, 500 images per class, 60 epochs,
#     seed 0; retrained when its checkpoint is gone, the committed metrics kept, the new ones beside them
#     as metrics.retrained.json), kd-cutmix from it at every seed and ad-cutmix, ad-cutmix-target-mixed at
#     every seed but 0 (committed); if the retrained teacher's final accuracy / AUROC differ from the
#     committed ones, all three also at seed 3 (one more than SEEDS' last), so that the control keeps
#     three pairs from one teacher (bench/ablation_table.py pairs two students only if they recorded the
#     same teacher metrics).
# The queue runs teachers first (the 500-image teacher, then the subsets'), then the KD control, then the
# students seed by seed (so that an interrupted replication has whole seeds). A lane takes the next job no
# lane has taken (mkdir claims in $STATE/claims, cleared when `run` starts; only one `run` at a time);
# a job done already (committed copy or finished run folder) is skipped in seconds, an interrupted one
# resumes from its checkpoint, a failed one is logged (FAILED in the lane's log) and the lane goes on;
# `run` again retries it. Each lane runs at OMP_NUM_THREADS=1 under nice -n $NICE (19: the open-set quality
# work on the same CPU comes first).
#
# Environment: PYTHON (.venv/bin/python if there, else python), OSR_DATA_ROOT, RESULTS (bench/results), RUNS (runs), SETTING, FLAGS, SEEDS,
# SUBSETS, LANES (2), NICE (19), T500 ("0.25:500:60": width:images per class:epochs of the control's
# teacher; the smoke test shrinks it), STATE ($RUNS/replication: claims, lane logs).
#
# Estimated CPU time, one run per core, from the epoch times in the grid's logs: per subset the w0.5
# teacher ~35 min and 3 x (CE 10 + CE+CutMix 10 + KD 20 + AD 27 + mixed-target AD 26) min, ~5.2 h; the KD
# control ~2.8 h (teacher 7 min, KD 3 x 19, AD 4 x 26); ~13 core-hours in all, ~7 h on two free cores.
set -u
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && py=.venv/bin/python || py=python
export PYTHON=${PYTHON:-$py} RESULTS=${RESULTS:-bench/results} RUNS=${RUNS:-runs}
SETTING=${SETTING:-resnet18:0.25:150:200}
export FLAGS=${FLAGS:---randaugment false --batch-size 32}
SEEDS=${SEEDS:-0 1 2}
SUBSETS=${SUBSETS:-1 2}
LANES=${LANES:-2}
NICE=${NICE:-19}
T500=${T500:-0.25:500:60}
STATE=${STATE:-$RUNS/replication}
STUDENTS="ce ce-cutmix kd-cutmix ad-cutmix ad-cutmix-target-mixed"
IFS=: read -r T500_WIDTH T500_PER_CLASS T500_EPOCHS <<< "$T500"
EXTRA_SEED=$(( $(echo "$SEEDS" | tr ' ' '\n' | sort -n | tail -1) + 1 ))
tag0=$(SUBSET_SEED="" bench/regime_search.sh tag "$SETTING")
t500_kept="$RESULTS/regime/$tag0/teacher-ce-w$T500_WIDTH-n$T500_PER_CLASS-e$T500_EPOCHS-seed0"

jobs_list() {  # one job a line: SUBSET METHOD SEED (subset 0 = the KD control's, "t" = teacher; if-differs = only then)
  echo "0 teacher 0"
  for s in $SUBSETS; do echo "$s teacher 0"; done
  for seed in $SEEDS; do echo "0 kd-cutmix $seed"; done
  for seed in $SEEDS; do
    [ "$seed" = 0 ] && continue
    echo "0 ad-cutmix-target-mixed $seed"; echo "0 ad-cutmix $seed"
  done
  for seed in $SEEDS; do for s in $SUBSETS; do for m in $STUDENTS; do echo "$s $m $seed"; done; done; done
  for m in kd-cutmix ad-cutmix-target-mixed ad-cutmix; do echo "0 $m $EXTRA_SEED if-differs"; done
}

teacher_differs() {  # the control's teacher was retrained and its final accuracy / AUROC differ from the committed
  [ -f "$t500_kept/metrics.retrained.json" ] && "$PYTHON" - "$t500_kept" <<'PYEOF'
import json, sys
old, new = (json.load(open(f"{sys.argv[1]}/{n}"))["metrics"] for n in ("metrics.json", "metrics.retrained.json"))
sys.exit(0 if any(old[m] != new[m] for m in ("accuracy", "auroc")) else 1)
PYEOF
}

job() {  # SUBSET METHOD SEED [if-differs]
  local subset=$1 method=$2 seed=$3 cond=${4:-}
  if [ "$cond" = if-differs ] && ! teacher_differs; then
    echo "skip (the control's teacher is the committed one): $method seed $seed"; return 0
  fi
  if [ "$subset" = 0 ]; then  # the KD control: subset 0, the 500-image teacher
    SUMMARY=0 SEEDS=$seed METHODS=$method SUBSET_SEED="" TEACHER_WIDTH=$T500_WIDTH TEACHER_PER_CLASS=$T500_PER_CLASS \
      TEACHER_EPOCHS=$T500_EPOCHS nice -n "$NICE" bench/regime_search.sh "$SETTING"
  else
    SUMMARY=0 SEEDS=$seed METHODS=$method SUBSET_SEED=$subset TEACHER_WIDTH=0.5 \
      nice -n "$NICE" bench/regime_search.sh "$SETTING"
  fi
}

lane() {  # LANE: take the next unclaimed job until none is left
  local i=0 line
  while read -r line; do
    i=$((i + 1))
    mkdir "$STATE/claims/$i" 2>/dev/null || continue
    echo "$(date +%T) lane $1 job $i: $line"
    # shellcheck disable=SC2086  # a job line is its words
    job $line || echo "$(date +%T) lane $1 job $i FAILED: $line"
  done < <(jobs_list)
  echo "$(date +%T) lane $1: queue empty"
}

summary() {
  local groups=("$RESULTS/regime/$tag0") s g
  [ -d "${groups[0]}" ] || { echo "nothing of the replication finished yet ($RESULTS/regime/$tag0)"; return 0; }
  for s in $SUBSETS; do
    g="$RESULTS/regime/$(SUBSET_SEED=$s bench/regime_search.sh tag "$SETTING")"
    [ -d "$g" ] && groups+=("$g")
  done
  local fam=(--family replication --control-teacher "teacher-ce-w$T500_WIDTH-n$T500_PER_CLASS-e$T500_EPOCHS"
             --student "${SETTING%%:*} w$(echo "$SETTING" | cut -d: -f2)")
  echo "## The registered test: subsets ${SUBSETS} (subset 0 seen; P4 on subset 0's KD control)"
  "$PYTHON" bench/ablation_table.py "${groups[@]}" "${fam[@]}" --seen "${groups[0]}"
  echo; echo "## Combined view, every subset (not the test)"
  "$PYTHON" bench/ablation_table.py "${groups[@]}" "${fam[@]}"
  for g in "${groups[@]:1}"; do
    echo; echo "## $(basename "$g") alone"; "$PYTHON" bench/ablation_table.py "$g"
  done
}

case ${1:-} in
  run)
    mkdir -p "$STATE"
    exec 8> "$STATE/run.lock"
    flock -n 8 || { echo "a replication run is going on already ($STATE/run.lock)"; exit 1; }
    rm -rf "$STATE/claims"; mkdir -p "$STATE/claims"
    echo "$(date +%T) replication: $(jobs_list | wc -l) jobs, $LANES lanes; lane logs $STATE/lane<N>.log"
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    for k in $(seq 1 "$LANES"); do lane "$k" > "$STATE/lane$k.log" 2>&1 & done
    wait
    grep -h "FAILED" "$STATE"/lane*.log && echo "some jobs failed: run again to retry them"
    summary ;;
  summary) summary ;;
  jobs) jobs_list | nl ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
