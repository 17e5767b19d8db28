"""The export report, computed by running the exported ONNX file in onnxruntime (not torch):
realised false-rejection rate against the conformal target, closed- and open-set metrics,
plots, report.md and report.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from osr.export.conformal import ConformalThreshold, binomial_band, conformal_band
from osr.export.graph import onnx_session, run_onnx
from osr.train.metrics import aupr, auroc, fpr_at_tpr, oscr, oscr_curve

BAND_LEVEL = 0.99


def _false_rejection(known: dict, known_y: np.ndarray, threshold: ConformalThreshold, num_classes: int) -> dict:
    rejected = known["label"] == -1
    n = len(rejected)
    alpha = threshold.target_false_rejection
    rate = float(rejected.mean())
    low, high = binomial_band(alpha, n, BAND_LEVEL)
    record = {
        "n_known_test": int(n),
        "false_rejection_rate": rate,
        "target": alpha,
        "binomial_band": [low, high],
        "band_level": BAND_LEVEL,
        "inside_binomial_band": bool(low <= rate <= high),
        # PAC thresholds aim below alpha, so "at or under the band's top" is the guarantee check.
        "consistent_with_guarantee": bool(rate <= high),
    }
    if threshold.confidence is None and threshold.per_class is None:
        c_low, c_high = conformal_band(threshold.n_calibration, threshold.rank, n, BAND_LEVEL)
        record["expected_rate"] = threshold.marginal_false_rejection_bound
        record["conformal_band"] = [c_low, c_high]
        record["inside_conformal_band"] = bool(c_low <= rate <= c_high)
    predicted = known["logits"].argmax(axis=1)
    record["per_predicted_class"] = [
        float(rejected[predicted == c].mean()) if np.any(predicted == c) else None for c in range(num_classes)
    ]
    record["per_true_class"] = [
        float(rejected[known_y == c].mean()) if np.any(known_y == c) else None for c in range(num_classes)
    ]
    record["band_to_read"] = band_to_read(record, pac=threshold.confidence is not None)
    return record


def band_to_read(record: dict, pac: bool = False) -> dict:
    """The one band a user should compare the realised false-rejection rate with, and the verdict.

    Plain split conformal: the band that includes the calibration draw (the threshold is itself random, so
    the binomial band around alpha is too narrow and misses more often than its level says). Per-class
    thresholds: the binomial band around alpha. PAC (--confidence): only the binomial band's top counts; a
    rate under it is what such a threshold aims for.
    """
    rate = record["false_rejection_rate"]
    if "conformal_band" in record:
        name, (low, high) = "conformal_band", record["conformal_band"]
        what = "the band that includes the randomness of the calibration draw"
    else:
        name, (low, high) = "binomial_band", record["binomial_band"]
        what = "the binomial band around alpha"
    if pac:
        verdict = "above" if rate > high else "ok"
        what += " (with --confidence only its top counts)"
    else:
        verdict = "above" if rate > high else "below" if rate < low else "ok"
    return {"name": name, "band": [low, high], "level": record["band_level"], "what": what, "verdict": verdict}


_NOT_EXCHANGEABLE = ("Either chance (under 1 in 100 exports) or the test images are not like the calibration images "
                     "(held out from train/): the guarantee holds only for images exchangeable with those")
_MISS = {
    "above": "known images are rejected more often than alpha promises. " + _NOT_EXCHANGEABLE,
    "below": "fewer known images are rejected than alpha targets (and likely fewer unknown ones). " + _NOT_EXCHANGEABLE,
}


def _band_words(record: dict) -> tuple[dict, str]:
    read = record.get("band_to_read") or band_to_read(record)
    low, high = read["band"]
    return read, f"{round(100 * read['level'])} % band [{low:.4f}, {high:.4f}], {read['what']}"


def band_note(record: dict) -> str:
    """One line for the console: the realised false-rejection rate against the band to read; it starts
    with "note: " and says what a miss means when the rate is outside."""
    read, band = _band_words(record)
    rate = (f"false-rejection rate {record['false_rejection_rate']:.4f} on {record['n_known_test']} known test "
            f"images (alpha {record['target']:g})")
    if read["verdict"] == "ok":
        return f"{rate}: inside the band to read, the {band}"
    return f"note: {rate} is {read['verdict'].upper()} the band to read, the {band}: {_MISS[read['verdict']]}"


def _band_paragraph(record: dict) -> str:
    read, band = _band_words(record)
    verdict = "inside it" if read["verdict"] == "ok" else f"**{read['verdict']} it**: {_MISS[read['verdict']]}"
    return f"**The band to read** is the {band}: the realised rate {record['false_rejection_rate']:.4f} is {verdict}."


def compute_report(
    model_path: Path,
    classes: Sequence[str],
    threshold: ConformalThreshold,
    test_known_x: np.ndarray,
    test_known_y: np.ndarray,
    test_unknown_x: np.ndarray | None,
    score_function: str,
) -> tuple[dict, dict]:
    """(report numbers, raw arrays for the plots) from onnxruntime outputs."""
    session = onnx_session(model_path)
    known = run_onnx(session, test_known_x)
    known_y = np.asarray(test_known_y)
    correct = known["logits"].argmax(axis=1) == known_y
    accepted = known["label"] != -1
    metrics: dict = {
        "computed_with": "onnxruntime on the exported model.onnx",
        "score_function": score_function,
        "accuracy": float(correct.mean()),
        "n_known_test": int(len(known_y)),
        "correct_and_accepted_rate": float(np.mean(correct & accepted)),
        "false_rejection": _false_rejection(known, known_y, threshold, len(classes)),
    }
    raw = {"known_score": known["score"], "known_correct": correct}
    if test_unknown_x is not None and len(test_unknown_x):
        unknown = run_onnx(session, test_unknown_x)
        s_known, s_unknown = known["score"].astype(np.float64), unknown["score"].astype(np.float64)
        metrics.update(
            {
                "n_unknown_test": int(len(s_unknown)),
                "unknown_rejected_rate": float(np.mean(unknown["label"] == -1)),
                "auroc": auroc(s_known, s_unknown),
                "aupr": aupr(s_known, s_unknown),
                "oscr": oscr(s_known, correct, s_unknown),
                "fpr_at_95tpr": fpr_at_tpr(s_known, s_unknown, 0.95),
            }
        )
        raw["unknown_score"] = unknown["score"]
    metrics["threshold"] = threshold.to_manifest()
    return metrics, raw


def _plots(raw: dict, threshold: ConformalThreshold, report_dir: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    figures: list[tuple[str, str]] = []
    known, unknown = raw["known_score"], raw.get("unknown_score")

    fig, ax = plt.subplots(figsize=(6, 4))
    everything = known if unknown is None else np.concatenate([known, unknown])
    bins = np.linspace(float(everything.min()), float(everything.max()) + 1e-6, 40)
    ax.hist(known, bins=bins, alpha=0.6, density=True, label=f"known test (n={len(known)})")
    if unknown is not None:
        ax.hist(unknown, bins=bins, alpha=0.6, density=True, label=f"unknown test (n={len(unknown)})")
    ax.axvline(threshold.value, color="k", linestyle="--", label=f"threshold {threshold.value:.3g}")
    if threshold.per_class is not None:
        for value in threshold.per_class:
            ax.axvline(value, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("score (higher = more known)")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(report_dir / "scores.png", dpi=100)
    plt.close(fig)
    figures.append(("Score histograms", "scores.png"))

    if unknown is not None:
        labels = np.concatenate([np.ones(len(known)), np.zeros(len(unknown))])
        fpr, tpr, _ = roc_curve(labels, np.concatenate([known, unknown]))
        _curve(report_dir / "roc.png", fpr, tpr, "known accepted (TPR)", "ROC, known = positive", diagonal=True)
        figures.append(("ROC", "roc.png"))
        fpr, ccr = oscr_curve(known, raw["known_correct"], unknown)
        _curve(report_dir / "oscr.png", fpr, ccr, "correct classification rate (CCR)", "OSCR curve")
        figures.append(("CCR vs FPR (OSCR)", "oscr.png"))
    return figures


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _markdown(metrics: dict, figures: list[tuple[str, str]], score_note: str = "") -> str:
    fr = metrics["false_rejection"]
    th = metrics["threshold"]
    lines = [
        "# Export report",
        "",
        f"Computed with {metrics['computed_with']}; score function `{metrics['score_function']}`.",
        "",
        *([f"Score: {score_note}.", ""] if score_note else []),
        "## Threshold",
        "",
        f"- method: {th['method']}, target false-rejection rate alpha = {th['target_false_rejection']}"
        + (f", confidence {th['confidence']}" if th["confidence"] is not None else ""),
        f"- value: {th['value']:.6g} (rank {th['rank']} of {th['n_calibration']} calibration scores)",
    ]
    if th["per_class"] is not None:
        lines.append(f"- per-class thresholds (by predicted class): {', '.join(f'{v:.4g}' for v in th['per_class'])}")
    lines += [
        "",
        "## Known test images",
        "",
        "| metric | value |",
        "|---|---|",
        f"| images | {fr['n_known_test']} |",
        f"| realised false-rejection rate | {_fmt(fr['false_rejection_rate'])} |",
        f"| binomial {int(fr['band_level'] * 100)} % band for alpha | "
        f"[{_fmt(fr['binomial_band'][0])}, {_fmt(fr['binomial_band'][1])}] |",
        f"| inside the band | {fr['inside_binomial_band']} |",
        f"| at or under the band's top | {fr['consistent_with_guarantee']} |",
    ]
    if "conformal_band" in fr:
        lines.append(
            f"| band incl. calibration randomness | [{_fmt(fr['conformal_band'][0])}, {_fmt(fr['conformal_band'][1])}] |"
        )
    lines += [
        f"| closed-set accuracy | {_fmt(metrics['accuracy'])} |",
        f"| correct and accepted | {_fmt(metrics['correct_and_accepted_rate'])} |",
        "",
        _band_paragraph(fr),
    ]
    if "conformal_band" in fr:
        lines.append("The binomial band above leaves out the calibration draw (the threshold is itself random): it is "
                     "narrower, and a rate outside it but inside the band to read is expected.")
    if "auroc" in metrics:
        lines += [
            "",
            "## Unknown test images",
            "",
            "| metric | value |",
            "|---|---|",
            f"| images | {metrics['n_unknown_test']} |",
            f"| share rejected as unknown | {_fmt(metrics['unknown_rejected_rate'])} |",
            f"| AUROC (known = positive) | {_fmt(metrics['auroc'])} |",
            f"| AUPR | {_fmt(metrics['aupr'])} |",
            f"| OSCR | {_fmt(metrics['oscr'])} |",
            f"| FPR at 95 % TPR | {_fmt(metrics['fpr_at_95tpr'])} |",
        ]
    for title, file in figures:
        lines += ["", f"## {title}", "", f"![{title}]({file})"]
    return "\n".join(lines) + "\n"


def write_report(
    model_path: Path,
    report_dir: Path,
    classes: Sequence[str],
    threshold: ConformalThreshold,
    test_known_x: np.ndarray,
    test_known_y: np.ndarray,
    test_unknown_x: np.ndarray | None,
    score_function: str = "max_logit",
    provenance: dict | None = None,
    score_note: str = "",
    export_command: str = "",
) -> dict:
    """Write report.json, report.md and the PNG plots into report_dir; return the metrics.
    ``score_note`` says what the score is; ``export_command`` is the osr-export line that wrote it."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    metrics, raw = compute_report(
        model_path, classes, threshold, test_known_x, test_known_y, test_unknown_x, score_function
    )
    figures = _plots(raw, threshold, report_dir)
    metrics["figures"] = [file for _, file in figures]
    (report_dir / "report.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    text = _markdown(metrics, figures, score_note) + _training_section(provenance or {})
    if export_command:
        text += f"\nExported with:\n\n```bash\n{export_command}\n```\n"
    (report_dir / "report.md").write_text(text, encoding="utf-8")
    return metrics


def _curve(path: Path, x: np.ndarray, y: np.ndarray, ylabel: str, title: str, diagonal: bool = False) -> None:
    """One curve against the share of unknown images accepted."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(x, y)
    if diagonal:
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("unknown accepted (FPR)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _training_section(provenance: dict) -> str:
    """How the exported model was trained: student, teacher, data, and the command that rebuilds it."""
    config = provenance.get("training_config")
    if not config:
        return ""
    from osr.train.config import command_line

    student = provenance.get("student", {})
    adapter = student.get("input") or {}
    lines = ["", "## How it was trained", "",
             f"- student: {student.get('arch')} (width {student.get('width')}), "
             + (f"ImageNet weights `{config['pretrained']}`, " if config.get("pretrained") else "from scratch, ")
             + (f"sees the {config.get('image_size')} px input at {adapter['size']} px" if adapter.get("size")
                else f"at {config.get('image_size')} px"),
             f"- method: {config.get('method')}" + (f" + {config['mix']}" if config.get("mix") != "none" else "")
             + f", {config.get('epochs')} epochs, seed {config.get('seed')}, "
             + (f"{config['max_train_per_class']} training images per class" if config.get("max_train_per_class")
                else "every training image")
             + (f" of the image folders in `{config.get('data_root')}`" if config.get("dataset") == "imagefolder"
                else f" of {config.get('dataset')} split {config.get('split')}")]
    teacher = provenance.get("teacher")
    if teacher:
        t_input = teacher.get("input") or {}
        t_metrics = teacher.get("metrics") or {}
        lines.append(f"- teacher: {teacher.get('arch')} run `{teacher.get('run_id')}`"
                     + (f" at {t_input['size']} px" if t_input.get("size") else "")
                     + (f"; its test accuracy {t_metrics['accuracy']:.4f}, AUROC {t_metrics['auroc']:.4f}"
                        if "accuracy" in t_metrics and "auroc" in t_metrics else ""))
    lines += ["", "```bash", command_line(config), "```"]
    return "\n".join(lines) + "\n"
