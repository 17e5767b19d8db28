"""The AD ablation table of one or more results groups, in points, with every run shown (issues 11, 24):
accuracy, AUROC by max-logit (the reported score), AUROC by MSP and OSCR (mean ± std over runs); paired
deltas of the four against CE, CE+CutMix and KD+CutMix; mean max-logit on known test images; each run's
accuracy / AUROC. Several groups are several data subsets of one setting (bench/replication_grid.sh): rows
pool them, and a pair is two runs of the same subset, seed and split (and, for two distilled runs, of the
same teacher weights). With --family, the paired tests of a registered claim family: mean Δ, 95 % interval,
raw and Holm-adjusted p, each subset's mean Δ, the same Δ by MSP AUROC and OSCR, and the verdict.

    python bench/ablation_table.py bench/results/regime/resnet18-w0.25-n150-e200-randaugment-false-batch-size-32
    python bench/ablation_table.py --family replication --seen G0 G0 G1 G2   # G0 = subset 0 (the grid), G1, G2 new
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from collect_results import collect, teacher_key
from paired_stats import holm, paired_t, tost, verdict

AGAINST = ("CE", "CE+CutMix", "KD+CutMix")  # CE: does a variant reach its AUROC?
METRICS = (("accuracy", "acc"), ("auroc", "AUROC"), ("auroc_msp", "AUROC MSP"), ("oscr", "OSCR"))


def points(values: list[float], signed: bool = False) -> str:
    return fraction([v * 100 for v in values], 1, signed)


def fraction(values: list[float], digits: int = 3, signed: bool = False) -> str:
    if not values:
        return ""
    mean = f"{statistics.mean(values):{'+' if signed else ''}.{digits}f}"
    return mean + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def subset_name(group: str) -> str:
    """"1" for a group folder ending in -subset1 (bench/replication_grid.sh), "0" for the original draw."""
    m = re.search(r"-subset(\d+)$", group)
    return m.group(1) if m else "0"


def pooled(groups: dict[str, dict]) -> dict[str, list[dict]]:
    """Rows over several groups: label -> runs, each run with its "group". A distilled student's label
    always names its teacher ("... from <teacher> [backbone]"), so the students of one teacher recipe pool
    across subsets whether or not their group had students of other teachers."""
    rows: dict[str, list[dict]] = {}
    budgets = Counter(tuple(r["budget"]) for methods in groups.values() for runs in methods.values() for r in runs
                      if "budget" in r)
    usual = max(budgets, key=lambda b: (budgets[b], b)) if budgets else None
    for group, methods in groups.items():
        for label, runs in methods.items():
            for r in runs:
                rows.setdefault(canonical(label, r, usual), []).append({**r, "group": group})
    return rows


def canonical(label: str, run: dict, usual_budget: tuple | None = None) -> str:
    """The label with its teacher named, and a budget other than the usual one of all groups named too (a
    group whose only CE run is a teacher on more images would otherwise give it the students' CE label)."""
    name, backbone = label[:label.index(" [")], label[label.index(" ["):]
    budget = tuple(run.get("budget") or ())
    if usual_budget and budget and budget != usual_budget and "/class, " not in name:
        name = name.split(" from ")[0] + f" ({budget[0] or 'all'}/class, {budget[1]} ep)" + (
            f" from {name.split(' from ', 1)[1]}" if " from " in name else "")
    if run.get("teacher") and " from " not in name:
        name += f" from {teacher_key(run['teacher'])}"
    return name + backbone


_RETRAINED = re.compile(r" \(teacher [\d.]+/[\d.]+\)")  # collect_results.split_by_teacher's mark


def runs_of(rows: dict, label: str) -> list[dict]:
    """The runs of ``label``; a label without collect_results' "(teacher <acc>/<AUROC>)" mark also takes the
    rows with it (the students of a teacher folder retrained between them; pairs() keeps teachers apart)."""
    return [r for lab, runs in rows.items() if lab == label or _RETRAINED.sub("", lab) == label for r in runs]


def reference_label(rows: dict, label: str, against: str) -> str | None:
    """The row ``label`` is compared with: "<against> [backbone]", or for a distilled reference the one of the
    same teacher ("KD+CutMix from <teacher> [backbone]"; for a row without a teacher the only such row)."""
    name, backbone = label[:label.index(" [")], label[label.index(" ["):]
    if f"{against} {backbone.strip()}" in rows:
        ref = f"{against} {backbone.strip()}"
    elif " from " in name:
        ref = f"{against} from {_RETRAINED.sub('', name.split(' from ', 1)[1])}{backbone}"
    else:
        found = {_RETRAINED.sub("", lab) for lab in rows if lab.startswith(f"{against} from ") and lab.endswith(backbone)}
        ref = found.pop() if len(found) == 1 else None
    return ref if ref and runs_of(rows, ref) and ref != label else None


def pairs(rows: dict, label: str, ref: str, metric: str, groups: set[str] | None = None) -> list[tuple[str, float]]:
    """(group, run of ``label`` minus run of ``ref``) for every two runs of the same group, seed and split
    (and the same recorded teacher metrics when both learnt from a teacher); only ``groups`` if given."""
    out = []
    for r in rows.get(label, []) if label in rows else runs_of(rows, label):
        if groups is not None and r["group"] not in groups:
            continue
        match = [c for c in runs_of(rows, ref) if (c["group"], c["seed"], c["split"]) == (r["group"], r["seed"], r["split"])
                 and same_teacher(r, c)]
        if len(match) > 1:
            raise ValueError(f"{ref}: {len(match)} runs pair with {r['run']} of {r['group']}")
        if match and r.get(metric) is not None and match[0].get(metric) is not None:
            out.append((r["group"], r[metric] - match[0][metric]))
    return out


def same_teacher(a: dict, b: dict) -> bool:
    fa, fb = a.get("teacher_fingerprint"), b.get("teacher_fingerprint")
    return fa is None or fb is None or tuple(fa) == tuple(fb)


def table(methods: dict, groups: dict | None = None) -> str:
    """``methods``: one group's label -> runs (collect()[group]); or pass ``groups`` (group -> methods) to pool."""
    rows = pooled(groups if groups is not None else {"": methods})
    several = groups is not None and len(groups) > 1
    delta_head = " / ".join(f"Δ{short}" for _, short in METRICS)
    lines = ["| student | runs | accuracy | AUROC | AUROC MSP | OSCR | "
             + " | ".join(f"{delta_head} vs {a} (points)" for a in AGAINST)
             + " | mean max-logit known | per run (accuracy / AUROC) |", "|---" * (8 + len(AGAINST)) + "|"]
    for label, runs in sorted(rows.items()):
        runs = sorted(runs, key=lambda r: (subset_name(r["group"]), r["seed"]))
        cells = [label, str(len(runs))] + [fraction([r[k] for r in runs if r.get(k) is not None]) for k, _ in METRICS]
        for against in AGAINST:
            ref = reference_label(rows, label, against)
            d = {k: [v for _, v in pairs(rows, label, ref, k)] for k, _ in METRICS} if ref else {}
            cells.append(" / ".join(points(d[k], True) or "–" for k, _ in METRICS) if d.get("accuracy") else "")
        cells.append(fraction([r["mean_max_logit_known"] for r in runs], 2))
        cells.append("; ".join(f"{subset_name(r['group']) + '/' if several else ''}s{r['seed']} "
                               f"{r['accuracy']:.3f} / {r['auroc']:.3f}" for r in runs))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Claim:
    name: str
    text: str
    a: str  # row label (pooled: a distilled student names its teacher)
    b: str
    metric: str  # accuracy or auroc (max-logit)
    alternative: str  # greater, less or equivalent
    margin: float  # points
    seen_too: bool = False  # tested on every group given, --seen ones included


def replication_family(student: str = "resnet18 w0.25", teacher: str = "teacher-ce-w0.5",
                       control_teacher: str = "teacher-ce-w0.25-n500-e60") -> tuple[Claim, ...]:
    """Registered in docs/results.md on 2026-12-08, before the replication's runs (issue 24). The defaults name
    the rows of the real grid; bench/replication_grid.sh passes its own (its smoke test has smaller teachers)."""
    s, mixed, raw = f"[{student}]", "AD+CutMix (learnable target: mixed)", "AD+CutMix"
    return (
        Claim("P0a", "CE+CutMix − CE accuracy > 0", f"CE+CutMix {s}", f"CE {s}", "accuracy", "greater", 0.0),
        Claim("P0b", "CE+CutMix − CE AUROC < 0", f"CE+CutMix {s}", f"CE {s}", "auroc", "less", 0.0),
        Claim("P1", "mixed-target AD − released AD AUROC > +1", f"{mixed} from {teacher} {s}", f"{raw} from {teacher} {s}",
              "auroc", "greater", 1.0),
        Claim("P2", "\\|mixed-target AD − CE\\| AUROC < 1", f"{mixed} from {teacher} {s}", f"CE {s}", "auroc",
              "equivalent", 1.0),
        Claim("P3", "mixed-target AD − CE accuracy > 0", f"{mixed} from {teacher} {s}", f"CE {s}", "accuracy", "greater",
              0.0),
        Claim("P4", "500-image teacher: mixed-target AD − KD+CutMix AUROC > +1", f"{mixed} from {control_teacher} {s}",
              f"KD+CutMix from {control_teacher} {s}", "auroc", "greater", 1.0, seen_too=True),
    )


FAMILIES = {"replication": replication_family}


def family_tests(groups: dict, claims: tuple[Claim, ...], seen: set[str] = frozenset(), alpha: float = 0.05) -> list[dict]:
    """Each claim's test on the pairs of the groups not in ``seen`` (a claim with seen_too: every group), in
    points; Holm over the whole family (a claim without 2 pairs counts as p = 1)."""
    rows = pooled(groups)
    results = []
    for c in claims:
        use = set(groups) if c.seen_too else set(groups) - set(seen)
        found = pairs(rows, c.a, c.b, c.metric, use)
        deltas = [v * 100 for _, v in found]
        res = {"claim": c, "pairs": len(deltas), "test": None, "subset_means": {}}
        if len(deltas) >= 2:
            res["test"] = (tost(deltas, -c.margin, c.margin) if c.alternative == "equivalent"
                           else paired_t(deltas, c.margin, c.alternative))
        by_group: dict[str, list[float]] = {}
        for g, v in found:
            by_group.setdefault(g, []).append(v * 100)
        res["subset_means"] = {subset_name(g): statistics.mean(v) for g, v in sorted(by_group.items())}
        for k in ("auroc_msp", "oscr"):  # beside the tested score, untested
            other = [v * 100 for _, v in pairs(rows, c.a, c.b, k, use)]
            res[k] = paired_t(other) if len(other) >= 2 else None
        results.append(res)
    adjusted = holm([r["test"]["p"] if r["test"] else None for r in results])
    for r, p in zip(results, adjusted):
        r["holm_p"] = p
        r["verdict"] = verdict(r["test"], p, list(r["subset_means"].values()), alpha) if r["test"] else "no data"
    return results


def _ci(t: dict | None) -> str:
    return f"{t['mean']:+.2f} [{t['ci'][0]:+.2f}, {t['ci'][1]:+.2f}]" if t else ""


def family_table(results: list[dict]) -> str:
    lines = ["| claim | prediction | pairs | Δ (points) [95 % CI] | test | p | Holm p | each subset's mean Δ | "
             "ΔAUROC MSP [95 % CI] | ΔOSCR [95 % CI] | verdict |", "|---" * 11 + "|"]
    for r in results:
        c, t = r["claim"], r["test"]
        test = (f"TOST ±{c.margin:g}" if c.alternative == "equivalent"
                else f"H0 Δ {'≤' if c.alternative == 'greater' else '≥'} {c.margin:{'+' if c.margin else ''}g}")
        means = "; ".join(f"{s}: {m:+.2f}" for s, m in r["subset_means"].items())
        lines.append(f"| {c.name} | {c.text} | {r['pairs']} | {_ci(t)} | {test} | {t['p']:.4f} | {r['holm_p']:.4f} | "
                     f"{means} | {_ci(r['auroc_msp'])} | {_ci(r['oscr'])} | {r['verdict']} |" if t else
                     f"| {c.name} | {c.text} | {r['pairs']} |  | {test} |  |  | {means} |  |  | {r['verdict']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("groups", type=Path, nargs="+",
                    help="bench/results/<kind>/<group> folders of <run>/metrics.json (one per data subset)")
    ap.add_argument("--family", choices=sorted(FAMILIES), help="also test a registered claim family")
    ap.add_argument("--seen", type=Path, nargs="*", default=[],
                    help="groups that suggested the claims: left out of their tests (except claims on them only)")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--teacher", default="teacher-ce-w0.5", help="replication: the subsets' teacher (folder name)")
    ap.add_argument("--control-teacher", default="teacher-ce-w0.25-n500-e60",
                    help="replication: the KD control's teacher (folder name without -seed<N>)")
    ap.add_argument("--student", default="resnet18 w0.25", help="replication: the students' backbone as labelled")
    args = ap.parse_args()
    chosen = {}
    for g in args.groups:
        found = collect(g.parent)
        if g.name not in found:
            raise SystemExit(f"no finished runs under {g}")
        chosen[g.name] = found[g.name]
    print(table({}, chosen) if len(chosen) > 1 else table(chosen[args.groups[0].name]))
    if args.family:
        print()
        claims = FAMILIES[args.family](args.student, args.teacher, args.control_teacher)
        print(family_table(family_tests(chosen, claims, {s.name for s in args.seen}, args.alpha)))


if __name__ == "__main__":
    main()
