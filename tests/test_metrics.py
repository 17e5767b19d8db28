import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from osr.train.metrics import (
    SCORES,
    aupr,
    auroc,
    fpr_at_tpr,
    known_score,
    open_set_metrics,
    oscr,
    oscr_curve,
)


def test_auroc_aupr_match_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    known, unknown = rng.normal(1, 1, 200), rng.normal(0, 1, 150)
    labels = np.r_[np.ones(200), np.zeros(150)]
    scores = np.r_[known, unknown]
    assert auroc(known, unknown) == pytest.approx(roc_auc_score(labels, scores))
    assert aupr(known, unknown) == pytest.approx(average_precision_score(labels, scores))


def test_auroc_aupr_hand_example():
    # ranking high->low: 0.9 K, 0.5 U, 0.4 K, 0.1 U
    # AUROC: 3 of 4 known/unknown pairs ordered correctly -> 0.75
    # AP: recall steps of 1/2 at precision 1/1 and 2/3 -> 0.5 + 1/3
    known, unknown = np.array([0.9, 0.4]), np.array([0.5, 0.1])
    assert auroc(known, unknown) == pytest.approx(0.75)
    assert aupr(known, unknown) == pytest.approx(0.5 + 1 / 3)


def test_fpr_at_95tpr_worked_example():
    # 20 known scores 1..20: accepting 95 % = 19 of them needs threshold t = 2 (the 19th
    # highest); t = 3 would accept only 18/20. Unknown scores >= 2: 2, 2.5, 3, 10, 21 -> 5/10.
    known = np.arange(1, 21, dtype=float)
    unknown = np.array([0.5, 1.5, 2.0, 2.5, 3.0, 10.0, 21.0, 1.9, 0.0, -1.0])
    assert fpr_at_tpr(known, unknown) == pytest.approx(0.5)
    # tpr = 1.0 needs t = 1: everything but 0.5, 0.0, -1.0 is accepted -> 7/10
    assert fpr_at_tpr(known, unknown, tpr=1.0) == pytest.approx(0.7)


def test_fpr_at_tpr_ties_at_threshold_are_accepted():
    known = np.array([1.0, 1.0, 1.0, 1.0])
    unknown = np.array([1.0, 0.0])
    assert fpr_at_tpr(known, unknown) == pytest.approx(0.5)


def test_oscr_perfect_separation_all_correct_is_one():
    assert oscr(np.array([3.0, 4.0]), np.array([True, True]), np.array([1.0, 2.0])) == pytest.approx(1.0)


def test_oscr_perfect_separation_half_correct_is_half():
    assert oscr(np.array([3.0, 4.0]), np.array([True, False]), np.array([1.0, 2.0])) == pytest.approx(0.5)


def test_oscr_hand_example():
    # Correct known scores: 0.9, 0.4, 0.3 (0.8 is misclassified); n_known = 4.
    # Each unknown raises FPR by 1/3 at the CCR of correct known scores above it:
    # u = 0.85 -> 1/4, u = 0.5 -> 1/4, u = 0.2 -> 3/4; area = (1/3)(1/4 + 1/4 + 3/4) = 5/12.
    known = np.array([0.9, 0.8, 0.4, 0.3])
    correct = np.array([True, False, True, True])
    unknown = np.array([0.85, 0.5, 0.2])
    assert oscr(known, correct, unknown) == pytest.approx(5 / 12)
    fpr, ccr = oscr_curve(known, correct, unknown)
    assert (fpr[0], ccr[0]) == (0.0, 0.0)
    assert fpr[-1] == pytest.approx(1.0) and ccr[-1] == pytest.approx(0.75)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(ccr) >= 0)


def test_oscr_tie_between_known_and_unknown_counts_against():
    # docs/method.md: CCR uses score > d, FPR uses score >= d
    assert oscr(np.array([0.5]), np.array([True]), np.array([0.5])) == pytest.approx(0.0)


def test_oscr_equals_pairwise_probability_on_random_data():
    rng = np.random.default_rng(1)
    known = rng.integers(0, 20, 60).astype(float)  # integer scores force ties
    unknown = rng.integers(0, 20, 40).astype(float)
    correct = rng.random(60) < 0.7
    pairwise = np.mean(correct[:, None] & (known[:, None] > unknown[None, :]))
    assert oscr(known, correct, unknown) == pytest.approx(pairwise)


def test_known_score_kinds_hand_example():
    logits = np.array([[0.0, np.log(3.0)], [2.0, 2.0]])
    np.testing.assert_allclose(known_score(logits, "max_logit"), [np.log(3.0), 2.0])
    np.testing.assert_allclose(known_score(logits, "msp"), [0.75, 0.5])
    np.testing.assert_allclose(known_score(logits, "energy"), [np.log(4.0), 2.0 + np.log(2.0)])
    # large logits must not overflow
    np.testing.assert_allclose(known_score(np.array([[1000.0, 1000.0]]), "energy"), [1000.0 + np.log(2.0)])


def test_known_score_rejects_unknown_kind():
    with pytest.raises(ValueError) as err:
        known_score(np.zeros((1, 2)), "entropy")
    for kind in SCORES:
        assert kind in str(err.value)


def test_open_set_metrics_keys_and_types():
    rng = np.random.default_rng(2)
    known_labels = rng.integers(0, 3, 50)
    known_logits = rng.normal(0, 1, (50, 3))
    known_logits[np.arange(50), known_labels] += 3.0
    unknown_logits = rng.normal(0, 1, (30, 3))
    result = open_set_metrics(known_logits, known_labels, unknown_logits)
    assert set(result) == {
        "accuracy", "auroc", "aupr", "oscr", "fpr_at_95tpr", "mean_max_logit_known",
        "mean_max_logit_unknown", "n_known", "n_unknown", "score",
    }
    assert result["n_known"] == 50 and result["n_unknown"] == 30 and result["score"] == "max_logit"
    for key in ("accuracy", "auroc", "aupr", "oscr", "fpr_at_95tpr"):
        assert type(result[key]) is float and 0.0 <= result[key] <= 1.0
    assert result["auroc"] > 0.8
    assert result["oscr"] <= result["accuracy"]
    accuracy = np.mean(known_logits.argmax(1) == known_labels)
    assert result["accuracy"] == pytest.approx(accuracy)
