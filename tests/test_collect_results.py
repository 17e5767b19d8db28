"""bench/collect_results.py: grouping by folder, unfinished runs skipped, paired Δ vs CE."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("collect_results", Path(__file__).parents[1] / "bench" / "collect_results.py")
collect_results = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(collect_results)


def write_run(root: Path, group: str, name: str, *, method: str, mix: str, seed: int, acc: float, auroc: float,
              epoch: int = 3, msp: float | None = None, teacher_metrics: tuple | None = None, **extra) -> None:
    cfg = {"method": method, "mix": mix, "smoothing_r": 0.75, "arch": "classifier32", "width": 0.25,
           "seed": seed, "split": 0, "epochs": 3, **extra}
    metrics = {"accuracy": acc, "auroc": auroc, "oscr": acc * auroc, "fpr_at_95tpr": 0.9,
               "mean_max_logit_known": 2.0, "mean_max_logit_unknown": 1.0, "auroc_msp": auroc if msp is None else msp}
    run = {"epoch": epoch, "config": cfg, "metrics": metrics}
    if teacher_metrics:  # what a student records of its teacher
        run["teacher"] = {"metrics": {"accuracy": teacher_metrics[0], "auroc": teacher_metrics[1]}}
    (root / group / name).mkdir(parents=True)
    (root / group / name / "metrics.json").write_text(json.dumps(run))


def test_paired_deltas_subtract_the_ce_run_of_the_same_seed(tmp_path: Path) -> None:
    write_run(tmp_path, "g", "ce-seed0", method="ce", mix="none", seed=0, acc=0.70, auroc=0.60)
    write_run(tmp_path, "g", "ce-seed1", method="ce", mix="none", seed=1, acc=0.80, auroc=0.70)
    write_run(tmp_path, "g", "ad-seed0", method="ad", mix="cutmix", seed=0, acc=0.75, auroc=0.58)
    write_run(tmp_path, "g", "ad-seed1", method="ad", mix="cutmix", seed=1, acc=0.81, auroc=0.66)
    write_run(tmp_path, "g", "ad-seed2", method="ad", mix="cutmix", seed=2, acc=0.9, auroc=0.9, epoch=2)  # unfinished
    groups = collect_results.collect(tmp_path)
    methods = groups["g"]
    assert sorted(methods) == ["AD+CutMix [classifier32 w0.25]", "CE [classifier32 w0.25]"]
    assert len(methods["AD+CutMix [classifier32 w0.25]"]) == 2
    d = collect_results.paired_deltas(methods, "AD+CutMix [classifier32 w0.25]")
    assert d["accuracy"] == pytest.approx([0.05, 0.01])
    assert d["auroc"] == pytest.approx([-0.02, -0.04])
    assert collect_results.paired_deltas(methods, "CE [classifier32 w0.25]") is None
    table = collect_results.markdown(groups)
    assert "| AD+CutMix [classifier32 w0.25] | 2 | 0.7800 ± 0.0424 |" in table
    assert "-0.0300 ± 0.0141" in table  # mean ± std of the paired AUROC differences


def test_pretrained_runs_get_their_own_section(tmp_path: Path) -> None:
    """ImageNet-pretrained groups are printed apart from the from-scratch tables, labelled as such."""
    write_run(tmp_path, "scratch", "ce-seed0", method="ce", mix="none", seed=0, acc=0.70, auroc=0.60)
    write_run(tmp_path, "pre", "ce-seed0", method="ce", mix="none", seed=0, acc=0.95, auroc=0.90,
              arch="efficientnet_lite0", width=1.0, pretrained="imagenet", input_size=64)
    write_run(tmp_path, "pre", "ad-seed0", method="ad", mix="cutmix", seed=0, acc=0.96, auroc=0.91,
              arch="efficientnet_lite0", width=1.0, pretrained="imagenet", input_size=64, ad_learnable_target="lam")
    groups = collect_results.collect(tmp_path)
    assert "AD+CutMix (learnable target: lam) [efficientnet_lite0 w1 ImageNet @64px, 3 ep, all img/class]" in groups["pre"]
    table = collect_results.markdown(groups)
    head, tail = table.split("## ImageNet-pretrained runs")
    assert "### scratch" in head and "### pre" not in head
    assert "### pre" in tail and "### scratch" not in tail


def test_pretrained_students_of_other_teachers_or_schedules_are_not_averaged_together(tmp_path: Path) -> None:
    pre = dict(arch="efficientnet_lite0", width=1.0, pretrained="imagenet", input_size=64)
    write_run(tmp_path, "pre", "kd-t96", method="kd", mix="cutmix", seed=0, acc=0.8, auroc=0.7, teacher="runs/t96", **pre)
    write_run(tmp_path, "pre", "kd-t128", method="kd", mix="cutmix", seed=0, acc=0.9, auroc=0.8, teacher="runs/t128", **pre)
    write_run(tmp_path, "pre", "ce-short", method="ce", mix="none", seed=0, acc=0.8, auroc=0.7, max_train_per_class=3000, **pre)
    write_run(tmp_path, "pre", "ce-long", method="ce", mix="none", seed=0, acc=0.9, auroc=0.8, epochs=4, epoch=4, **pre)
    labels = set(collect_results.collect(tmp_path)["pre"])
    assert labels == {
        "KD+CutMix from t96 [efficientnet_lite0 w1 ImageNet @64px, 3 ep, all img/class]",
        "KD+CutMix from t128 [efficientnet_lite0 w1 ImageNet @64px, 3 ep, all img/class]",
        "CE [efficientnet_lite0 w1 ImageNet @64px, 3 ep, 3000 img/class]",
        "CE [efficientnet_lite0 w1 ImageNet @64px, 4 ep, all img/class]",
    }


def test_deltas_against_other_reference_methods_pair_by_seed(tmp_path: Path) -> None:
    write_run(tmp_path, "g", "ce-cutmix-seed0", method="ce", mix="cutmix", seed=0, acc=0.74, auroc=0.61)
    write_run(tmp_path, "g", "ce-cutmix-seed1", method="ce", mix="cutmix", seed=1, acc=0.72, auroc=0.60)
    write_run(tmp_path, "g", "kd-cutmix-seed0", method="kd", mix="cutmix", seed=0, acc=0.75, auroc=0.65)
    write_run(tmp_path, "g", "kd-cutmix-seed1", method="kd", mix="cutmix", seed=1, acc=0.74, auroc=0.66)
    write_run(tmp_path, "g", "ad-cutmix-seed1", method="ad", mix="cutmix", seed=1, acc=0.73, auroc=0.69)
    methods = collect_results.collect(tmp_path)["g"]
    d = collect_results.paired_deltas(methods, "KD+CutMix [classifier32 w0.25]", "CE+CutMix")
    assert d["accuracy"] == pytest.approx([0.01, 0.02]) and d["auroc"] == pytest.approx([0.04, 0.06])
    d = collect_results.paired_deltas(methods, "AD+CutMix [classifier32 w0.25]", "KD+CutMix")
    assert d["accuracy"] == pytest.approx([-0.01]) and d["auroc"] == pytest.approx([0.03])  # seed 1 only
    table = collect_results.markdown({"g": methods}, ("CE+CutMix", "KD+CutMix"))
    assert "Δacc vs CE+CutMix | ΔAUROC vs CE+CutMix | Δacc vs KD+CutMix | ΔAUROC vs KD+CutMix |" in table
    assert "| KD+CutMix [classifier32 w0.25] | 2 | 0.7450 ± 0.0071 |" in table


def test_students_of_two_teachers_are_never_averaged_together(tmp_path: Path) -> None:
    for seed, teacher, acc in ((0, "runs/g/teacher-a-seed0", 0.7), (1, "runs/g/teacher-a-seed1", 0.72),
                               (0, "runs/g/teacher-b-seed0", 0.8)):
        write_run(tmp_path, "g", f"kd-{teacher.split('-')[1]}-seed{seed}", method="kd", mix="cutmix", seed=seed, acc=acc,
                  auroc=0.6, teacher=teacher)
    write_run(tmp_path, "g", "ad-seed0", method="ad", mix="cutmix", seed=0, acc=0.75, auroc=0.6, teacher="runs/g/t-seed0")
    write_run(tmp_path, "g", "ad-seed1", method="ad", mix="cutmix", seed=1, acc=0.77, auroc=0.6, teacher="runs/g/t-seed1")
    methods = collect_results.collect(tmp_path)["g"]
    assert sorted(methods) == ["AD+CutMix [classifier32 w0.25]", "KD+CutMix from teacher-a [classifier32 w0.25]",
                               "KD+CutMix from teacher-b [classifier32 w0.25]"]
    assert [r["accuracy"] for r in methods["KD+CutMix from teacher-a [classifier32 w0.25]"]] == [0.7, 0.72]
    assert len(methods["AD+CutMix [classifier32 w0.25]"]) == 2  # one teacher per seed (cpu_grid.sh) is one teacher


def load_ablation_table(monkeypatch):
    spec = importlib.util.spec_from_file_location("ablation_table", Path(__file__).parents[1] / "bench" / "ablation_table.py")
    ablation_table = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "bench"))  # its `from collect_results import`
    monkeypatch.setitem(sys.modules, "ablation_table", ablation_table)  # its dataclass looks its module up
    spec.loader.exec_module(ablation_table)
    return ablation_table


def test_ablation_table_shows_paired_deltas_against_ce_cutmix_and_every_seed(tmp_path: Path, monkeypatch) -> None:
    ablation_table = load_ablation_table(monkeypatch)
    for seed, (ce, cut, ad) in enumerate([((0.70, 0.64), (0.73, 0.61), (0.74, 0.64)), ((0.72, 0.62), (0.75, 0.60), (0.74, 0.63))]):
        write_run(tmp_path, "g", f"ce-seed{seed}", method="ce", mix="none", seed=seed, acc=ce[0], auroc=ce[1], msp=0.6)
        write_run(tmp_path, "g", f"ce-cutmix-seed{seed}", method="ce", mix="cutmix", seed=seed, acc=cut[0], auroc=cut[1],
                  msp=0.62)
        write_run(tmp_path, "g", f"ad-cutmix-seed{seed}", method="ad", mix="cutmix", seed=seed, acc=ad[0], auroc=ad[1],
                  msp=0.61 + seed / 100)
    rows = {line.split(" | ")[0]: line.split(" | ") for line in ablation_table.table(collect_results.collect(tmp_path)["g"]).splitlines()}
    ad = next(cells for label, cells in rows.items() if label.startswith("| AD+CutMix"))
    # MSP AUROC and OSCR beside max-logit: 0.61, 0.62; OSCR = acc x AUROC = 0.4736, 0.4662
    assert ad[2:6] == ["0.740 ± 0.000", "0.635 ± 0.007", "0.615 ± 0.007", "0.470 ± 0.005"]
    # vs CE: acc +4, +2 -> +3.0 ± 1.4; AUROC 0, +1 -> +0.5 ± 0.7; MSP +1, +2 -> +1.5 ± 0.7;
    # OSCR 0.4736 - 0.448 = +2.56, 0.4662 - 0.4464 = +1.98 -> +2.3 ± 0.4.
    # vs CE+CutMix: acc +1, -1; AUROC +3, +3; MSP -1, 0; OSCR 0.4736 - 0.4453 = +2.83, 0.4662 - 0.45 = +1.62
    assert ad[6:8] == ["+3.0 ± 1.4 / +0.5 ± 0.7 / +1.5 ± 0.7 / +2.3 ± 0.4",
                       "+0.0 ± 1.4 / +3.0 ± 0.0 / -0.5 ± 0.7 / +2.2 ± 0.9"]
    assert ad[-1] == "s0 0.740 / 0.640; s1 0.740 / 0.630 |"


def test_ablation_table_pools_subsets_and_pairs_runs_of_one_subset_and_seed(tmp_path: Path, monkeypatch) -> None:
    """Two data subsets (two groups): a row pools both, a Δ pairs runs of the same subset and seed, and the
    students of one teacher recipe share a row whether or not their group also had another teacher."""
    ablation_table = load_ablation_table(monkeypatch)
    for group, base in (("grid", 0.70), ("grid-subset1", 0.60)):
        for seed in (0, 1):
            write_run(tmp_path, group, f"ce-seed{seed}", method="ce", mix="none", seed=seed, acc=base + seed / 100, auroc=0.6)
            write_run(tmp_path, group, f"kd-seed{seed}", method="kd", mix="cutmix", seed=seed, acc=base + 0.02 + seed / 50,
                      auroc=0.6, teacher=f"runs/{group}/teacher-ce-w0.5-seed0")
    write_run(tmp_path, "grid", "kd-big-seed0", method="kd", mix="cutmix", seed=0, acc=0.9, auroc=0.7,
              teacher="runs/grid/teacher-ce-w0.25-n500-e60-seed0")
    groups = collect_results.collect(tmp_path)
    assert "KD+CutMix from teacher-ce-w0.5 [classifier32 w0.25]" in groups["grid"]
    assert "KD+CutMix [classifier32 w0.25]" in groups["grid-subset1"]  # one teacher in that group: not named
    rows = ablation_table.pooled(groups)
    kd = rows["KD+CutMix from teacher-ce-w0.5 [classifier32 w0.25]"]
    assert sorted((r["group"], r["seed"]) for r in kd) == [("grid", 0), ("grid", 1), ("grid-subset1", 0), ("grid-subset1", 1)]
    d = ablation_table.pairs(rows, "KD+CutMix from teacher-ce-w0.5 [classifier32 w0.25]", "CE [classifier32 w0.25]", "accuracy")
    # the subsets' accuracies differ by 10 points; the pairs do not mix them: +2 + seed
    assert sorted((g, round(v * 100, 6)) for g, v in d) == [("grid", 2), ("grid", 3), ("grid-subset1", 2), ("grid-subset1", 3)]
    table = ablation_table.table({}, groups)
    line = next(x for x in table.splitlines() if x.startswith("| KD+CutMix from teacher-ce-w0.5"))
    assert "| 4 |" in line and "+2.5 ± 0.6" in line and "1/s1 0.640 / 0.600" in line and "0/s0 0.720 / 0.600" in line


def test_students_of_a_retrained_teacher_get_their_own_row_and_never_pair_across_teachers(tmp_path: Path,
                                                                                        monkeypatch) -> None:
    """A teacher folder retrained between its students (its checkpoint was gone): the students recorded other
    teacher metrics, so they are told apart, and a KD/AD pair needs the same teacher."""
    ablation_table = load_ablation_table(monkeypatch)
    t, old, new = "runs/g/teacher-big-seed0", (0.8288, 0.7432), (0.8301, 0.7410)
    write_run(tmp_path, "g", "ad-seed0", method="ad", mix="cutmix", seed=0, acc=0.76, auroc=0.67, teacher=t, teacher_metrics=old)
    for seed in (0, 1):
        write_run(tmp_path, "g", f"kd-seed{seed}", method="kd", mix="cutmix", seed=seed, acc=0.75, auroc=0.64, teacher=t,
                  teacher_metrics=new)
    write_run(tmp_path, "g", "ad-seed1", method="ad", mix="cutmix", seed=1, acc=0.77, auroc=0.66, teacher=t, teacher_metrics=new)
    methods = collect_results.collect(tmp_path)["g"]
    assert sorted(methods) == ["AD+CutMix from teacher-big (teacher 0.8288/0.7432) [classifier32 w0.25]",
                               "AD+CutMix from teacher-big (teacher 0.8301/0.7410) [classifier32 w0.25]",
                               "KD+CutMix from teacher-big (teacher 0.8301/0.7410) [classifier32 w0.25]"]
    rows = ablation_table.pooled({"g": methods})
    d = ablation_table.pairs(rows, "AD+CutMix from teacher-big [classifier32 w0.25]",
                             "KD+CutMix from teacher-big [classifier32 w0.25]", "auroc")
    assert [round(v, 6) for _, v in d] == [0.02]  # seed 1 only: seed 0's AD learnt from the other weights


def test_family_tests_leave_the_seen_subset_out_and_correct_over_the_family(tmp_path: Path, monkeypatch) -> None:
    ablation_table = load_ablation_table(monkeypatch)
    Claim = ablation_table.Claim
    for group, gain in (("g", 5.0), ("g-subset1", 1.0), ("g-subset2", 2.0)):
        for seed in range(3):
            write_run(tmp_path, group, f"ce-seed{seed}", method="ce", mix="none", seed=seed, acc=0.7, auroc=0.6)
            write_run(tmp_path, group, f"cut-seed{seed}", method="ce", mix="cutmix", seed=seed,
                      acc=0.7 + (gain + seed / 2) / 100, auroc=0.58)
    groups = collect_results.collect(tmp_path)
    claims = (Claim("A", "CutMix − CE accuracy > 0", "CE+CutMix [classifier32 w0.25]", "CE [classifier32 w0.25]",
                    "accuracy", "greater", 0.0),
              Claim("B", "CutMix − CE accuracy > +3", "CE+CutMix [classifier32 w0.25]", "CE [classifier32 w0.25]",
                    "accuracy", "greater", 3.0),
              Claim("C", "no data", "AD+CutMix [classifier32 w0.25]", "CE [classifier32 w0.25]", "auroc", "greater", 0.0))
    res = ablation_table.family_tests(groups, claims, seen={"g"})
    a, b, c = res
    assert a["pairs"] == 6 and a["subset_means"] == pytest.approx({"1": 1.5, "2": 2.5})  # subset 0 left out
    assert a["test"]["mean"] == pytest.approx(2.0)
    raw = [a["test"]["p"], b["test"]["p"]]
    assert a["holm_p"] == pytest.approx(min(1, 3 * raw[0])) and c["holm_p"] is None and c["verdict"] == "no data"
    assert a["verdict"] == "held" and b["verdict"] == "falsified"  # b: upper bound of the interval below +3
    assert ablation_table.family_tests(groups, claims)[0]["pairs"] == 9  # nothing seen: every subset
    table = ablation_table.family_table(res)
    assert "| A | CutMix − CE accuracy > 0 | 6 | +2.00 [" in table and "| held |" in table


def test_a_run_on_another_budget_gets_its_own_row_and_leaves_the_pairs_alone(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_run(tmp_path, "g", f"ce-seed{seed}", method="ce", mix="none", seed=seed, acc=0.70, auroc=0.60)
        write_run(tmp_path, "g", f"ad-seed{seed}", method="ad", mix="cutmix", seed=seed, acc=0.72, auroc=0.61)
    # a CE teacher on more images and other epochs, seed 0: the same method label otherwise
    write_run(tmp_path, "g", "teacher-seed0", method="ce", mix="none", seed=0, acc=0.83, auroc=0.74,
              epoch=60, epochs=60, max_train_per_class=500)
    methods = collect_results.collect(tmp_path)["g"]
    assert [r["run"] for r in methods["CE [classifier32 w0.25]"]] == ["ce-seed0", "ce-seed1"]
    assert [r["run"] for r in methods["CE (500/class, 60 ep) [classifier32 w0.25]"]] == ["teacher-seed0"]
    d = collect_results.paired_deltas(methods, "AD+CutMix [classifier32 w0.25]")
    assert [round(x, 4) for x in d["accuracy"]] == [0.02, 0.02]


def test_pooled_rows_name_a_budget_other_than_the_usual_one(tmp_path: Path, monkeypatch) -> None:
    """A group whose only CE run is a teacher on more images (the KD control's group before its students ran)
    must not give that teacher the students' CE row when groups are pooled."""
    ablation_table = load_ablation_table(monkeypatch)
    for group in ("a", "b"):
        for seed in (0, 1):
            write_run(tmp_path, group, f"ce-seed{seed}", method="ce", mix="none", seed=seed, acc=0.7, auroc=0.6)
    write_run(tmp_path, "solo", "teacher-seed0", method="ce", mix="none", seed=0, acc=0.83, auroc=0.74,
              epoch=60, epochs=60, max_train_per_class=500)
    groups = collect_results.collect(tmp_path)
    assert list(groups["solo"]) == ["CE [classifier32 w0.25]"]  # alone in its group, it has the plain label
    rows = ablation_table.pooled(groups)
    assert sorted(rows) == ["CE (500/class, 60 ep) [classifier32 w0.25]", "CE [classifier32 w0.25]"]
    assert len(rows["CE [classifier32 w0.25]"]) == 4


def test_the_registered_family_finds_its_rows_in_the_committed_grid(monkeypatch) -> None:
    """The labels of the replication family are those the committed grid's rows have (subset 0: P0-P3 have their
    3 seeds; P4 has no KD control yet)."""
    ablation_table = load_ablation_table(monkeypatch)
    name = "resnet18-w0.25-n150-e200-randaugment-false-batch-size-32"
    groups = {name: collect_results.collect(Path(__file__).parents[1] / "bench" / "results" / "regime")[name]}
    res = ablation_table.family_tests(groups, ablation_table.replication_family())
    assert [r["claim"].name for r in res] == ["P0a", "P0b", "P1", "P2", "P3", "P4"]
    assert [r["pairs"] for r in res] == [3, 3, 3, 3, 3, 0]
    assert res[2]["test"]["mean"] == pytest.approx(2.43, abs=0.005)  # mixed-target minus released AD, AUROC points
    assert ablation_table.family_tests(groups, ablation_table.replication_family(), seen={name})[0]["pairs"] == 0
