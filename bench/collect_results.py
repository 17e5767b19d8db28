"""Collect per-run metrics.json files under bench/results/ into a table (mean ± std over
seeds/splits per group and method) and a plot of AUROC against accuracy.

    python bench/collect_results.py            # prints Markdown, writes bench/results/summary.json
    python bench/collect_results.py --plot docs/auroc_vs_accuracy.png
    python bench/collect_results.py --root bench/results/regime --against CE+CutMix --against KD+CutMix
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
COLUMNS = [("accuracy", "acc"), ("auroc", "AUROC"), ("oscr", "OSCR"), ("fpr_at_95tpr", "FPR@95TPR"),
           ("mean_max_logit_known", "max-logit known"), ("mean_max_logit_unknown", "max-logit unknown")]


def method_label(cfg: dict) -> str:
    label = cfg["method"].upper() if cfg["method"] != "ce" else "CE"
    if cfg["mix"] != "none":
        label += f"+{'CutMix' if cfg['mix'] == 'cutmix' else 'Mixup'}"
    if cfg["method"] == "ad" and cfg["smoothing_r"] != 0.75:
        label += f" (r={cfg['smoothing_r']:g})"
    if cfg.get("ad_mixed_ce"):
        label += f" +{cfg['ad_mixed_ce']:g}·CE on mixed"
    if cfg["method"] == "ad" and cfg.get("ad_learnable_target", "raw") != "raw":
        label += f" (learnable target: {cfg['ad_learnable_target']})"
    backbone = f"{cfg['arch']} w{cfg['width']:g}"
    if cfg.get("pretrained"):
        backbone += " ImageNet"
    if cfg.get("input_size"):
        backbone += f" @{cfg['input_size']}px"
    if cfg.get("pretrained"):  # schedules differ between pretrained runs of one backbone
        backbone += f", {cfg['epochs']} ep, {cfg.get('max_train_per_class') or 'all'} img/class"
    if cfg.get("pretrained") and cfg.get("teacher"):  # pretrained students of several teachers share a group
        label += f" from {Path(cfg['teacher']).name}"
    return f"{label} [{backbone}]"


def is_pretrained(group: dict) -> bool:
    """A group with any ImageNet-pretrained run: reported apart, never beside the from-scratch protocol."""
    return any(r.get("pretrained") for runs in group.values() for r in runs)


def collect(root: Path = RESULTS) -> dict:
    groups: dict = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.glob("*/*/metrics.json")):
        run = json.loads(path.read_text())
        if run["epoch"] != run["config"]["epochs"]:
            continue  # unfinished
        teacher = run["config"].get("teacher")
        groups[path.parent.parent.name][method_label(run["config"])].append(
            {"run": path.parent.name, "seed": run["config"]["seed"], "split": run["config"]["split"],
             "pretrained": run["config"].get("pretrained"), "teacher": Path(teacher).name if teacher else None,
             "teacher_fingerprint": teacher_fingerprint(run),
             "budget": (run["config"].get("max_train_per_class") or 0, run["config"]["epochs"]), **run["metrics"]})
    for methods in groups.values():
        split_by_budget(methods)
        split_by_teacher(methods)
    return groups


def split_by_budget(methods: dict) -> None:
    """Runs of one method trained on other data or for other epochs never share a row (e.g. a
    teacher trained on more images than its students): the budget most of the label's runs have
    keeps the label, each other one gets "(<images>/class, <epochs> ep)" after the method name."""
    def suffix(r: dict, budgets: Counter) -> str:
        if r["budget"] == max(budgets, key=lambda b: (budgets[b], b)):
            return ""
        images, epochs = r["budget"]
        return f" ({images or 'all'}/class, {epochs} ep)"
    _split_rows(methods, lambda r: r["budget"], suffix)


def split_by_teacher(methods: dict) -> None:
    """Students of different teachers never share a row: a label whose runs learnt from more than
    one teacher becomes one label per teacher ("KD+CutMix from <teacher folder> [backbone]").
    Teachers that differ only in their seed suffix (cpu_grid.sh: one teacher per student seed)
    count as one. A teacher folder whose students recorded different teacher metrics was retrained
    between them (another teacher under the same name): its students are told apart by those metrics,
    "from <teacher> (teacher <accuracy>/<AUROC>)"."""
    prints: dict = defaultdict(set)
    for runs in methods.values():
        for r in runs:
            if r["teacher"]:
                prints[r["teacher"]].add(r.get("teacher_fingerprint"))
    retrained = {t for t, fps in prints.items() if len(fps) > 1}

    def key(r: dict) -> str | None:
        k = teacher_key(r["teacher"])
        if r["teacher"] in retrained and r.get("teacher_fingerprint"):
            k += " (teacher {:.4f}/{:.4f})".format(*r["teacher_fingerprint"])
        return k
    _split_rows(methods, key, lambda r, _: f" from {key(r)}")
    for label in [lab for lab, runs in methods.items() if any(r["teacher"] in retrained for r in runs)]:
        if " from " not in label[:label.index(" [")]:  # one teacher, but a retrained one: say which weights
            runs = methods.pop(label)
            methods[f"{label[:label.index(' [')]} from {key(runs[0])}{label[label.index(' ['):]}"] = runs


def teacher_fingerprint(run: dict) -> tuple[float, float] | None:
    """The teacher's final (accuracy, AUROC) as the student recorded them: two students of one teacher folder
    learnt from the same weights only if these agree (None: not recorded)."""
    m = (run.get("teacher") or {}).get("metrics") or {}
    return (m["accuracy"], m["auroc"]) if "accuracy" in m and "auroc" in m else None


def _split_rows(methods: dict, key, suffix) -> None:
    """Relabel the runs of every label whose runs differ in ``key``: method name + ``suffix(run,
    Counter of keys)`` + backbone."""
    for label in list(methods):
        keys = Counter(key(r) for r in methods[label])
        if len(keys) < 2:
            continue
        runs = methods.pop(label)
        name, backbone = label[:label.index(" [")], label[label.index(" ["):]
        for r in runs:
            methods[f"{name}{suffix(r, keys)}{backbone}"].append(r)


def teacher_key(teacher: str | None) -> str | None:
    """A teacher's folder name without its -seed<N> suffix."""
    return re.sub(r"-seed\d+$", "", teacher) if teacher else None


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def paired_deltas(methods: dict, label: str, against: str = "CE") -> dict[str, list[float]] | None:
    """Per-run differences from method ``against`` of the same backbone, seed and split (None
    without such a run, or for ``against`` itself)."""
    ref = methods.get(f"{against} " + label[label.index("["):])
    if ref is None or label.startswith(f"{against} ["):
        return None
    by_run = {(r["seed"], r["split"]): r for r in ref}
    pairs = [(r, by_run[(r["seed"], r["split"])]) for r in methods[label] if (r["seed"], r["split"]) in by_run]
    if not pairs:
        return None
    return {k: [r[k] - c[k] for r, c in pairs] for k in ("accuracy", "auroc", "oscr")}


def markdown(groups: dict, against: tuple[str, ...] = ("CE",)) -> str:
    lines = []
    scratch = {g: m for g, m in groups.items() if not is_pretrained(m)}
    pretrained = {g: m for g, m in groups.items() if is_pretrained(m)}
    lines += _tables(scratch, against)
    if pretrained:
        lines += ["## ImageNet-pretrained runs (not comparable with the from-scratch open-set protocol)", ""]
        lines += _tables(pretrained, against)
    lines.append("Δ columns: mean ± std over seeds of (method − the named method of the same backbone, seed and split).")
    return "\n".join(lines)


def _tables(groups: dict, against: tuple[str, ...]) -> list[str]:
    lines = []
    for group, methods in groups.items():
        deltas = [f"Δacc vs {a} | ΔAUROC vs {a}" for a in against]
        lines += [f"### {group}", "", "| method | runs | " + " | ".join(c[1] for c in COLUMNS)
                  + " | " + " | ".join(deltas) + " |", "|---|---|" + "---|" * (len(COLUMNS) + 2 * len(against))]
        for label, runs in sorted(methods.items()):
            cells = [mean_std([r[k] for r in runs]) for k, _ in COLUMNS]
            for a in against:
                d = paired_deltas(methods, label, a)
                cells += [mean_std(d["accuracy"]), mean_std(d["auroc"])] if d else ["", ""]
            lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def plot(groups: dict, out: Path) -> None:
    """One panel per group, three per row; one colour per method (backbone aside) in every panel;
    small dots are runs, the large marker is the mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({label.split(" [")[0] for m in groups.values() for label in m})
    colour = {name: plt.cm.tab10(i % 10) for i, name in enumerate(methods)}
    cols = min(3, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.3 * rows), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    for ax, (group, by_label) in zip(axes.flat, groups.items()):
        for label, runs in sorted(by_label.items()):
            acc, auc = [r["accuracy"] for r in runs], [r["auroc"] for r in runs]
            c = colour[label.split(" [")[0]]
            ax.scatter(acc, auc, color=c, s=12, alpha=0.6)
            ax.scatter([statistics.mean(acc)], [statistics.mean(auc)], color=c, s=70, edgecolor="black",
                       label=f"{label} (n={len(runs)})")
        ax.set(xlabel="closed-set accuracy", ylabel="AUROC (known vs unknown)", title=group)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--root", type=Path, default=RESULTS,
                   help="folder of groups (<root>/<group>/<run>/metrics.json); summary.json is written for the default only")
    p.add_argument("--against", action="append", default=None, metavar="METHOD",
                   help="reference method of the Δ columns, as labelled in the table (e.g. CE+CutMix); repeatable; default CE")
    a = p.parse_args()
    groups = collect(a.root)
    if a.root == RESULTS:
        (RESULTS / "summary.json").write_text(json.dumps(groups, indent=2))
    print(markdown(groups, tuple(a.against or ["CE"])))
    if a.plot:  # the from-scratch protocol only: pretrained runs have their own table
        plot({g: m for g, m in groups.items() if not is_pretrained(m)}, a.plot)


if __name__ == "__main__":
    main()
