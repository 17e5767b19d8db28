"""``osr-export --score auto``: the score and its setting chosen without the test set, with an exact guarantee.

The held-out known images are split in two, stratified by class: a *selection* part, on which the
score is chosen, and a *calibration* part, on which the threshold is set. The threshold never sees
an image the choice saw, so split conformal's guarantee stays exact (P(reject a known image) <= alpha).

Choosing a score needs unknown images, and a user usually has none. So each known class is held
out in turn and plays the unknown: the kNN bank (training features) leaves it out, a linear head
refit on the other classes' training features stands in for the logit scores, and the AUROC of
the other classes' selection images against the held-out class's is averaged over classes. The fused
candidates add the standardised max-logit and kNN similarity (statistics of the fold's known images). All
candidates are scored on the same features (the trained model's head input), so the estimate
compares score functions, not networks. It is an estimate: a held-out class was in the features'
training, which makes it easier to reject than a truly new class, for every candidate alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from osr.train.metrics import auroc, known_score

LOGIT_CANDIDATES: tuple[str, ...] = ("max_logit", "energy", "msp")
KNN_K_CANDIDATES: tuple[int, ...] = (1, 5, 10, 20, 50)
FUSED_K_CANDIDATES: tuple[int, ...] = (5, 20)
SELECTION_FRACTION = 0.5  # of the held-out known images, per class


@dataclass
class Selection:
    """The chosen score (and kNN k), every candidate's estimate, and which held-out images chose."""

    score_function: str
    knn_k: int | None
    estimates: dict[str, float]  # candidate name ("max_logit", "knn20", ...) -> mean held-out-class AUROC
    selection_indices: np.ndarray  # into the held-out known images
    calibration_indices: np.ndarray
    per_class: dict[str, list[float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.score_function}{self.knn_k}" if self.knn_k is not None else self.score_function

    def to_record(self, classes: list[str]) -> dict:
        return {"method": "held-out-class estimate on a selection part of the held-out known images",
                "chosen": self.name, "score_function": self.score_function, "knn_k": self.knn_k,
                "estimates": {k: round(v, 4) for k, v in self.estimates.items()},
                "n_selection": int(len(self.selection_indices)), "n_calibration": int(len(self.calibration_indices)),
                "classes_held_out": list(classes)}


def split_selection(labels: np.ndarray, fraction: float = SELECTION_FRACTION, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(selection, calibration) indices: disjoint, together every index, ``fraction`` of each class selects."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the selection fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    selection = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        selection.append(members[:int(round(fraction * len(members)))])
    chosen = np.sort(np.concatenate(selection)) if selection else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    return chosen, rest


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _knn_scores(bank: np.ndarray, features: np.ndarray, ks: list[int]) -> dict[int, np.ndarray]:
    similarity = np.sort(_unit(features) @ bank.T, axis=1)[:, ::-1]
    return {k: similarity[:, k - 1] for k in ks}


def held_out_class_estimates(train_f: np.ndarray, train_y: np.ndarray, select_f: np.ndarray, select_y: np.ndarray,
                             ks: tuple[int, ...] = KNN_K_CANDIDATES, knn_train_f: np.ndarray | None = None,
                             knn_select_f: np.ndarray | None = None) -> dict[str, list[float]]:
    """candidate -> AUROC per held-out class (other classes' selection images = known, the held-out class's = unknown).
    ``knn_train_f``/``knn_select_f``: the kNN part's features when they come from another network."""
    knn_train_f = train_f if knn_train_f is None else knn_train_f
    knn_select_f = select_f if knn_select_f is None else knn_select_f
    from sklearn.linear_model import LogisticRegression

    classes = np.unique(train_y)
    if len(classes) < 3:
        raise ValueError(f"held-out-class estimation needs at least 3 known classes (2 stay known), got {len(classes)}")
    per_class: dict[str, list[float]] = {}
    for c in classes:
        keep, known, novel = train_y != c, select_y != c, select_y == c
        if not novel.any() or not known.any():
            continue
        bank = _unit(knn_train_f[keep])
        usable = [k for k in ks if k <= min(np.bincount(train_y[keep])[np.unique(train_y[keep])])]
        for k, s in _knn_scores(bank, knn_select_f, usable).items():
            per_class.setdefault(f"knn{k}", []).append(auroc(s[known], s[novel]))
        mu, sd = train_f[keep].mean(0), train_f[keep].std(0) + 1e-6
        head = LogisticRegression(C=0.1, max_iter=3000).fit((train_f[keep] - mu) / sd, train_y[keep])
        logits = head.decision_function((select_f - mu) / sd)
        if logits.ndim == 1:  # two classes left: sklearn gives one margin
            logits = np.stack([-logits / 2, logits / 2], 1)
        for kind in LOGIT_CANDIDATES:
            s = known_score(logits, kind)
            per_class.setdefault(kind, []).append(auroc(s[known], s[novel]))
        top = logits.max(1)
        for k, s in _knn_scores(bank, knn_select_f, [k for k in FUSED_K_CANDIDATES if k in usable]).items():
            fused = fuse(top, s, fusion_stats(top[known], s[known]))
            per_class.setdefault(f"fused{k}", []).append(auroc(fused[known], fused[novel]))
    return per_class


def fusion_stats(max_logit: np.ndarray, knn: np.ndarray) -> tuple[float, float, float, float]:
    """(m1, s1, m2, s2): the two parts' means and standard deviations on known images."""
    return (float(np.mean(max_logit)), float(np.std(max_logit)) + 1e-6, float(np.mean(knn)), float(np.std(knn)) + 1e-6)


def fuse(max_logit: np.ndarray, knn: np.ndarray, stats: tuple[float, float, float, float]) -> np.ndarray:
    """The fused score, as the graph computes it (osr.export.graph.OsrGraph)."""
    m1, s1, m2, s2 = stats
    return (max_logit - m1) / s1 + (knn - m2) / s2


def choose_score(train_f: np.ndarray, train_y: np.ndarray, held_f: np.ndarray, held_y: np.ndarray,
                 fraction: float = SELECTION_FRACTION, seed: int = 0, knn_train_f: np.ndarray | None = None,
                 knn_held_f: np.ndarray | None = None) -> Selection:
    """Split the held-out known images, estimate every candidate on the selection part, pick the best mean."""
    select, calibrate = split_selection(held_y, fraction, seed)
    knn_held_f = held_f if knn_held_f is None else knn_held_f
    per_class = held_out_class_estimates(np.asarray(train_f), np.asarray(train_y), np.asarray(held_f)[select],
                                         np.asarray(held_y)[select], knn_train_f=knn_train_f,
                                         knn_select_f=np.asarray(knn_held_f)[select])
    estimates = {name: float(np.mean(v)) for name, v in per_class.items()}
    # ties go to the earlier candidate: the logit scores need no bank in the graph
    order = list(LOGIT_CANDIDATES) + [f"knn{k}" for k in KNN_K_CANDIDATES] + [f"fused{k}" for k in FUSED_K_CANDIDATES]
    best = max((n for n in order if n in estimates), key=lambda n: estimates[n])
    score, k = parse_candidate(best)
    return Selection(score, k, estimates, select, calibrate, per_class)


def parse_candidate(name: str) -> tuple[str, int | None]:
    """"knn20" -> ("knn", 20), "fused5" -> ("fused", 5), "energy" -> ("energy", None)."""
    for prefix in ("knn", "fused"):
        if name.startswith(prefix):
            return prefix, int(name.removeprefix(prefix))
    return name, None


def markdown(record: dict) -> str:
    """The report's section on the choice (or, for --score fused, on where its statistics came from)."""
    if "estimates" not in record:
        return ("\n## The fused score's statistics\n\n"
                f"The {record['n_selection'] + record['n_calibration']} held-out known images were split: "
                f"{record['n_selection']} gave the means and standard deviations that standardise the max-logit and "
                f"the kNN similarity, the other {record['n_calibration']} set the threshold (so the false-rejection "
                "guarantee is exact).\n")
    rows = sorted(record["estimates"].items(), key=lambda kv: -kv[1])
    lines = ["", "## How the score was chosen (--score auto)", "",
             f"The {record['n_selection'] + record['n_calibration']} held-out known images were split: "
             f"{record['n_selection']} chose the score, the other {record['n_calibration']} set the threshold (so the "
             "false-rejection guarantee is exact). No unknown or test image was used: each known class was held out "
             "in turn as the unknown (kNN bank without it; a linear head refit without it for the logit scores) and "
             "the AUROCs averaged. Chosen: "
             f"**{record['chosen']}**.", "", "| candidate | held-out-class AUROC |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in rows]
    return "\n".join(lines) + "\n"
