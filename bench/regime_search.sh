#!/bin/bash
# Issue 11, item 2: search for a regime where mixing pays on this CPU. CE against CE+CutMix only,
# CIFAR-10 split 0, over settings of (architecture, width, training images per class, epochs);
# the regime is found when CE+CutMix beats CE on closed-set accuracy by >= 1 point, paired by seed
# over 3 seeds. Resumable like cpu_grid.sh: a run whose metrics.json reached its final epoch is
# skipped (committed copy or run folder), an interrupted one continues with --resume.
#
#   bench/regime_search.sh [ARCH:WIDTH:IMAGES_PER_CLASS:EPOCHS ...]   # default: the settings below
#   bench/regime_search.sh summary                                    # paired accuracy deltas so far
#   bench/regime_search.sh tag ARCH:WIDTH:IMAGES_PER_CLASS:EPOCHS        # the group folder name of a setting
#   e.g. SEEDS=0 bench/regime_search.sh classifier32:0.5:150:100      # screen one setting on seed 0
#
# The ablation grid in the regime found (issue 11): METHODS names the students, e.g.
#   METHODS="kd-cutmix ad-cutmix ad-cutmix-r0 ad-cutmix-target-mixed ad-cutmix-target-lam ad-cutmix-target-none" \
#     FLAGS="--randaugment false --batch-size 32" bench/regime_search.sh resnet18:0.25:150:200
# KD and AD students learn from one CE teacher per setting: the same architecture at TEACHER_WIDTH
# (0.5), same data, epochs and FLAGS, seed TEACHER_SEED (0), trained first (runs/regime/<tag>/
# teacher-ce-w<width>-seed<seed>/; two calls at once wait for each other's teacher, flock). A
# committed copy of the teacher's metrics does not skip it: its checkpoint is retrained if gone.
# A teacher that sees more data or trains for another number of epochs than the students:
# TEACHER_PER_CLASS (images per class; 0 = every training image) and TEACHER_EPOCHS; it is then
# teacher-ce-w<width>-n<images>-e<epochs>-seed<seed>/ and its students <method>-by-w<width>-n<images>-e<epochs>-seed<seed>/
# (bench/collect_results.py gives students of different teachers rows of their own).
# Methods: ce, ce-cutmix, kd-cutmix, ad-cutmix (r 0.75, learnable target raw: the released code's
# choices), ad-cutmix-r0 (--smoothing-r 0), ad-cutmix-target-{mixed,lam,none} (--ad-learnable-target);
# teacher: only the teacher of the KD/AD students (bench/replication_grid.sh queues it as a job of its own).
# Another data subset (issue 24): SUBSET_SEED=N adds --subset-seed N to the teacher and every student
# (another draw of IMAGES_PER_CLASS images per class, same hold-out and test sets) and -subset<N> to the
# tag, so each subset is a group of its own with its own teacher. A committed run that is retrained
# (a teacher whose checkpoint is gone) keeps its committed metrics.json/log.jsonl; the new ones go beside
# them as metrics.retrained.json/log.retrained.jsonl, with a line saying whether the final metrics agree.
#
# Runs: runs/regime/<tag>/{ce,ce-cutmix}-seed<seed>/, tag = <arch>-w<width>-n<images>-e<epochs>;
# metrics.json + log.jsonl copied to $RESULTS/regime/<tag>/<run>-seed<seed>/.
# Environment: PYTHON (python), OSR_DATA_ROOT (../shared/datasets), RESULTS (bench/results), RUNS (runs),
# SUBSET_SEED (unset), SUMMARY (1; 0 = no summary at the end),
# SEEDS ("0 1 2"), FLAGS (extra osr-train flags, word-split; they become part of the tag), METHODS
# ("ce ce-cutmix"; ONLY is its old name: run one method, so two runs can train at the same time in
# two calls), TEACHER_WIDTH, TEACHER_SEED, TEACHER_PER_CLASS, TEACHER_EPOCHS. Test metrics are computed twice per
# run (half-way and at the end: --eval-every EPOCHS/2), on the full test sets (6,000 known,
# 4,000 unknown images).
#
# Estimated minutes per run (one CE or CE+CutMix run; a CutMix step costs what a CE step does).
# ONE epoch of each setting was timed (150 images per class, CutMix, batch 128, nice -n 19, on
# 2026-12-01 while other jobs shared the 2 cores: load average 6-9), giving the "measured" column.
# The "idle" column projects an idle machine: the idle reference classifier32 w0.25 (CE+CutMix,
# 500 images per class: 2.6 ms per training image, about a third of it per-image augmentation;
# bench/results/why-long-cifar10-s0/ce-cutmix-seed0/log.jsonl) scaled by forward FLOPs
# (torch.utils.flop_counter); that came out at measured / 2.4-2.7 for the classifier32 rows, and
# the resnet18 rows use measured / 2.5 (resnet18 w0.25 runs slower than its FLOPs: many thin
# layers). Evaluation assumes a forward pass costs a third of the reference's compute per image.
# Per run = epochs x 6 classes x images x ms/img + 2 evaluations + ~15 s start.
#
#   setting          params  MFLOP/img  ms/img measured(loaded)  ms/img idle(projected)  eval 10k imgs idle
#   classifier32 w0.5   251k     83          22.2                     8.1                     25 s
#   classifier32 w0.75  563k    186          41.5                    17.3                     55 s
#   classifier32 w1     1.0M    329          73.0                    30.2                     98 s
#   resnet18 w0.25      701k     70          31.0                    12.4                     21 s
#   resnet18 w0.5       2.8M    279          58.1                    23.2                     83 s
#
#   idle projection, minutes per run   images/class:   150                300                500
#                                      epochs:       60  100  200       60  100  200       60  100  200
#   classifier32 w0.5                                 8   13   26       16   26   50       26   42   83
#   classifier32 w0.75                               18   28   54       33   54  106       54   89  175
#   classifier32 w1                                  31   49   94       58   94  184       94  154  305
#   resnet18 w0.25                                   12   20   38       23   38   75       38   63  125
#   resnet18 w0.5                                    24   38   73       45   73  142       73  119  235
# At the loaded speed every entry is about 2.5x longer (only classifier32 w0.5, 150 x 60 stays
# under 25 minutes). The loaded speed is noisy: the same 1-epoch run of classifier32 w0.25 took
# 26.5 ms/img, 10x its idle speed, so time a setting on an idle machine before trusting a row (measured 2026-12-01: resnet18 w0.25 at batch 32, 150/class,
# took about 3 s per epoch with two runs sharing the cores, a quarter of its projection; results and the regime found:
# docs/results.md). The timing runs: 1 epoch each of
#   python -m osr.train.cli --dataset cifar10 --split 0 --data-root ../shared/datasets --arch A --width W \
#     --max-train-per-class 150 --max-test-per-class 250 --epochs 1 --batch-size 128 --mix cutmix --device cpu
#
# Default settings: those projected at about 25 minutes per run or less on an idle machine, in
# order of projected cost (13, 16, 18, 20, 24, 26 minutes): 6 runs per setting with 3 seeds.
set -u
PY=${PYTHON:-python}
DATA=${OSR_DATA_ROOT:-../shared/datasets}
RESULTS=${RESULTS:-bench/results}
RUNS=${RUNS:-runs}
SEEDS=${SEEDS:-0 1 2}
METHODS=${METHODS:-${ONLY:-ce ce-cutmix}}
TEACHER_WIDTH=${TEACHER_WIDTH:-0.5}; TEACHER_SEED=${TEACHER_SEED:-0}
DEFAULT_SETTINGS=(
  classifier32:0.5:150:100
  classifier32:0.5:300:60
  classifier32:0.75:150:60
  resnet18:0.25:150:100
  resnet18:0.5:150:60
  classifier32:0.5:150:200
)

finished() { [ -f "$1" ] && "$PY" -c "import json,sys; d=json.load(open('$1')); sys.exit(d['epoch'] != d['config']['epochs'])"; }

summary() {  # every group: mean ± std, and paired deltas against CE, CE+CutMix and KD+CutMix
  "$PY" bench/collect_results.py --root "$RESULTS/regime" --against CE --against CE+CutMix --against KD+CutMix
}

method_flags() {  # METHOD TEACHER -> osr-train flags
  local t=(--teacher "$2")
  case $1 in
    ce) echo --method ce ;;
    ce-cutmix) echo --method ce --mix cutmix ;;
    kd-cutmix) echo --method kd --mix cutmix "${t[@]}" ;;
    ad-cutmix) echo --method ad --mix cutmix "${t[@]}" ;;
    ad-cutmix-r0) echo --method ad --mix cutmix --smoothing-r 0 "${t[@]}" ;;
    ad-cutmix-target-mixed|ad-cutmix-target-lam|ad-cutmix-target-none)
      echo --method ad --mix cutmix --ad-learnable-target "${1##*-}" "${t[@]}" ;;
    teacher) echo "" ;;
    *) echo "unknown method $1" >&2; return 1 ;;
  esac
}

run() {  # tag name seed flags...
  local tag=$1 name=$2 seed=$3; shift 3
  local out="$RUNS/regime/$tag/$name-seed$seed" kept="$RESULTS/regime/$tag/$name-seed$seed"
  if [ -z "${NEED_CHECKPOINT:-}" ] && finished "$kept/metrics.json"; then echo "done already (committed): $kept"; return 0; fi
  if finished "$out/metrics.json" && { [ -z "${NEED_CHECKPOINT:-}" ] || [ -f "$out/checkpoint.pt" ]; }; then
    echo "done already: $out"
  else
    local resume=(); [ -f "$out/checkpoint.pt" ] && resume=(--resume)
    mkdir -p "$(dirname "$out")"
    echo "$(date +%T) start $out"
    # shellcheck disable=SC2086  # FLAGS is a word list on purpose
    "$PY" -m osr.train.cli --dataset cifar10 --split 0 --data-root "$DATA" --batch-size 128 --seed "$seed" \
      --out "$out" "${resume[@]}" "$@" ${FLAGS:-} > "$out.log" 2>&1 \
      || { echo "FAILED $out (see $out.log)"; return 1; }
    echo "$(date +%T) done $out"
  fi
  if finished "$kept/metrics.json" && ! cmp -s "$out/metrics.json" "$kept/metrics.json"; then
    # a committed run trained again (its checkpoint was gone): the committed copy stays, the new one beside it
    cp "$out/metrics.json" "$kept/metrics.retrained.json" && cp "$out/log.jsonl" "$kept/log.retrained.jsonl"
    "$PY" - "$kept" <<'PYEOF'
import json, sys
k = sys.argv[1]
old, new = (json.load(open(f"{k}/{n}"))["metrics"] for n in ("metrics.json", "metrics.retrained.json"))
same = all(old[m] == new[m] for m in ("accuracy", "auroc"))
print(f"retrained {k}: final accuracy / AUROC {new['accuracy']:.4f} / {new['auroc']:.4f}, committed "
      f"{old['accuracy']:.4f} / {old['auroc']:.4f}: " + ("the same" if same else "WARNING: they differ (other weights)"))
PYEOF
  else
    mkdir -p "$kept" && cp "$out/metrics.json" "$out/log.jsonl" "$kept/"
  fi
}

tag_of() {  # SETTING -> the group folder name (FLAGS and SUBSET_SEED included)
  local arch width per_class epochs tag
  IFS=: read -r arch width per_class epochs <<< "$1"
  tag="$arch-w$width-n$per_class-e$epochs"
  # extra flags name their own folder: e.g. FLAGS="--randaugment false" -> ...-e100-randaugment-false
  [ -n "${FLAGS:-}" ] && tag="$tag-$(echo "$FLAGS" | sed 's/^-*//; s/ \{1,\}-*/-/g' | tr -c 'A-Za-z0-9.\n-' '_')"
  [ -n "${SUBSET_SEED:-}" ] && tag="$tag-subset$SUBSET_SEED"
  echo "$tag"
}

if [ "${1:-}" = summary ]; then summary; exit 0; fi
if [ "${1:-}" = tag ]; then tag_of "$2"; exit 0; fi
SETTINGS=("$@"); [ $# -eq 0 ] && SETTINGS=("${DEFAULT_SETTINGS[@]}")
for setting in "${SETTINGS[@]}"; do
  IFS=: read -r arch width per_class epochs <<< "$setting"
  [ -n "$epochs" ] || { echo "bad setting $setting: want ARCH:WIDTH:IMAGES_PER_CLASS:EPOCHS" >&2; exit 2; }
  tag=$(tag_of "$setting")
  S=(--arch "$arch" --width "$width" --max-train-per-class "$per_class" --epochs "$epochs"
     --eval-every $(( epochs / 2 > 0 ? epochs / 2 : 1 )))
  sub=(); [ -n "${SUBSET_SEED:-}" ] && sub=(--subset-seed "$SUBSET_SEED")
  S+=("${sub[@]}")
  t_per_class=${TEACHER_PER_CLASS:-$per_class}; t_epochs=${TEACHER_EPOCHS:-$epochs}
  t_name="teacher-ce-w$TEACHER_WIDTH"; by=""
  if [ "$t_per_class:$t_epochs" != "$per_class:$epochs" ]; then
    t_name="$t_name-n$t_per_class-e$t_epochs"; by="-by-w$TEACHER_WIDTH-n$t_per_class-e$t_epochs"
  fi
  T=(--arch "$arch" --width "$TEACHER_WIDTH" --epochs "$t_epochs" --eval-every $(( t_epochs / 2 > 0 ? t_epochs / 2 : 1 )))
  [ "$t_per_class" != 0 ] && T+=(--max-train-per-class "$t_per_class" "${sub[@]}")
  teacher="$RUNS/regime/$tag/$t_name-seed$TEACHER_SEED"
  if [[ " $METHODS " == *" kd-"* || " $METHODS " == *" ad-"* || " $METHODS " == *" teacher "* ]]; then
    mkdir -p "$RUNS/regime/$tag"
    ( flock 9; NEED_CHECKPOINT=1 run "$tag" "$t_name" "$TEACHER_SEED" "${T[@]}" --method ce ) \
      9> "$RUNS/regime/$tag/teacher.lock" || exit 1
  fi
  for seed in $SEEDS; do
    for method in $METHODS; do
      [ "$method" = teacher ] && continue
      flags=$(method_flags "$method" "$teacher") || exit 2
      name=$method; [[ $method == kd-* || $method == ad-* ]] && name="$method$by"
      # shellcheck disable=SC2086  # flags is a word list (no spaces inside the teacher path)
      run "$tag" "$name" "$seed" "${S[@]}" $flags || failed=1
    done
  done
done
[ "${SUMMARY:-1}" = 0 ] || summary
exit "${failed:-0}"  # a failed run fails the call (after the others ran)
