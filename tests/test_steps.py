"""The per-method training steps, on hand-built batches whose loss is worked out in the test.

The AD known-answer batch: the teacher is the identity (its logits are the input rows, chosen
below), the student a fixed linear map, and the mixing is replaced by a fixed mixed batch, perm
and lam, so every target distribution is written out here and compared with a DIST built on
torch.corrcoef, independently of osr.train.losses.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from osr.train.config import TrainConfig
from osr.train.steps import EpochTerms, Step, mixed_ce

# ---------------------------------------------------------------- the hand-built AD batch

K = 4
LAM = 0.3
Y = torch.tensor([0, 1, 2, 3, 0, 1])
PERM = torch.tensor([1, 0, 3, 2, 5, 4])  # Y[PERM] = [1, 0, 3, 2, 1, 0]
# the teacher's logits on the raw images
X = torch.tensor([[3.0, 0.5, 0.0, -1.0],
                  [0.2, 2.5, -0.5, 0.0],
                  [-1.0, 0.0, 2.0, 0.7],
                  [0.0, -0.3, 0.4, 1.8],
                  [2.2, 0.1, -0.6, 0.3],
                  [0.5, 1.9, 0.0, -0.2]])
# the teacher's logits on the mixed images; top-1 per row: 1 (= Y[PERM]), 1 (= Y), 0 (neither),
# 1 (neither), 0 (= Y), 3 (neither)
X_MIX = torch.tensor([[1.0, 1.5, 0.0, 0.2],
                      [0.3, 1.2, 0.1, -0.4],
                      [1.1, 0.2, 0.9, 0.8],
                      [0.0, 1.3, 0.5, 1.0],
                      [1.4, 0.9, -0.2, 0.1],
                      [0.2, 0.6, 0.3, 0.9]])
LEARN, HARD = [0, 1, 4], [2, 3, 5]
W = torch.tensor([[0.9, 0.1, 0.0, -0.2],
                  [0.0, 1.1, 0.3, 0.0],
                  [0.2, -0.1, 0.8, 0.1],
                  [0.0, 0.2, 0.0, 1.2]])
B = torch.tensor([0.1, -0.2, 0.3, 0.0])
# smoothed two-hot target (r = 0.75, K = 4) of the hard rows: 0.1875 everywhere, plus 0.25 * lam
# on Y and 0.25 * (1 - lam) on Y[PERM]
Q_HARD = torch.tensor([[0.1875, 0.1875, 0.2625, 0.3625],   # row 2: Y = 2, Y[PERM] = 3
                       [0.1875, 0.1875, 0.3625, 0.2625],   # row 3: Y = 3, Y[PERM] = 2
                       [0.3625, 0.2625, 0.1875, 0.1875]])  # row 5: Y = 1, Y[PERM] = 0


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.corrcoef(torch.stack([a, b]))[0, 1]


def _ref_dist(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """DIST on probabilities, beta = gamma = tau = 1: 1 - mean row correlation + 1 - mean column correlation."""
    inter = 1 - torch.stack([_corr(p[i], q[i]) for i in range(len(p))]).mean()
    intra = 1 - torch.stack([_corr(p[:, c], q[:, c]) for c in range(p.shape[1])]).mean()
    return inter + intra


def _student() -> nn.Module:
    lin = nn.Linear(K, K)
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(B)
    return lin


def _ad_step(x_mix: torch.Tensor = X_MIX, **cfg) -> Step:
    step = Step(TrainConfig(method="ad", mix="cutmix", teacher="t.pt", **cfg), K, nn.Identity())
    step.mix = lambda x, alpha: (x_mix, PERM, LAM)  # a fixed mixed batch, perm and lam
    return step


def _expected_ad_terms(target: str) -> dict[str, torch.Tensor]:
    p = F.softmax(X_MIX @ W.T + B, dim=1)
    q_raw, q_perm, q_mix = F.softmax(X, dim=1), F.softmax(X[PERM], dim=1), F.softmax(X_MIX, dim=1)
    terms = {"loss_dist_raw_pair": LAM * _ref_dist(p, q_raw) + (1 - LAM) * _ref_dist(p, q_perm)}
    learn_target = {"raw": q_raw, "mixed": q_mix, "lam": LAM * q_raw + (1 - LAM) * q_perm}.get(target)
    if learn_target is not None:
        terms["loss_learnable"] = _ref_dist(p[LEARN], learn_target[LEARN])
    terms["loss_hard_soft_ce"] = -(Q_HARD * p[HARD].log()).sum(1).mean()
    return terms


@pytest.mark.parametrize("target", ["raw", "mixed", "lam", "none"])
def test_ad_learnable_target_known_answer(target):
    loss, stats = _ad_step(ad_learnable_target=target)(_student(), X, Y, mixed=True)
    expected = _expected_ad_terms(target)
    assert {k for k in stats if k.startswith("loss_")} == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(stats[k], v, atol=1e-5, rtol=1e-5, msg=k)
    torch.testing.assert_close(loss, sum(expected.values()), atol=1e-5, rtol=1e-5)
    assert stats["learnable_fraction"].item() == pytest.approx(0.5)
    assert stats["max_logit"].item() == pytest.approx((X_MIX @ W.T + B).max(1).values.mean().item(), abs=1e-6)


def test_ad_learnable_targets_differ_on_the_hand_built_batch():
    losses = {t: _ad_step(ad_learnable_target=t)(_student(), X, Y, mixed=True)[1].get("loss_learnable")
              for t in ("raw", "mixed", "lam")}
    assert min(abs(losses[a] - losses[b]) for a, b in [("raw", "mixed"), ("raw", "lam"), ("mixed", "lam")]) > 1e-3


def test_ad_lam_target_is_zero_when_the_student_predicts_the_lambda_mixture():
    # Mixed rows = log(lam * softmax(x) + (1 - lam) * softmax(x[perm])): an identity student then
    # predicts exactly the lam target, so that term is 0, while the raw-image target (the base
    # image, the minority at lam = 0.3) is not.
    x_mix = (LAM * F.softmax(X, dim=1) + (1 - LAM) * F.softmax(X[PERM], dim=1)).log()
    assert (x_mix.argmax(1) == Y[PERM]).all()  # every row learnable: the teacher sees the majority image
    _, lam_stats = _ad_step(x_mix, ad_learnable_target="lam")(nn.Identity(), X, Y, mixed=True)
    _, raw_stats = _ad_step(x_mix, ad_learnable_target="raw")(nn.Identity(), X, Y, mixed=True)
    assert lam_stats["learnable_fraction"].item() == 1.0
    assert lam_stats["loss_learnable"].item() == pytest.approx(0.0, abs=1e-5)
    assert raw_stats["loss_learnable"].item() > 0.5


def test_ad_default_target_is_the_raw_image():
    assert TrainConfig(method="ad", teacher="t.pt").ad_learnable_target == "raw"
    with pytest.raises(ValueError, match="ad_learnable_target"):
        TrainConfig(method="ad", teacher="t.pt", ad_learnable_target="base")


def test_ad_mixed_ce_term_is_its_weighted_two_hot_ce_and_terms_sum_to_the_loss():
    loss, stats = _ad_step(ad_mixed_ce=0.5)(_student(), X, Y, mixed=True)
    s = X_MIX @ W.T + B
    two_hot_ce = LAM * F.cross_entropy(s, Y) + (1 - LAM) * F.cross_entropy(s, Y[PERM])
    torch.testing.assert_close(stats["loss_mixed_ce"], 0.5 * two_hot_ce)
    torch.testing.assert_close(loss, sum(v for k, v in stats.items() if k.startswith("loss_")))
    base, _ = _ad_step()(_student(), X, Y, mixed=True)
    torch.testing.assert_close(loss - base, 0.5 * two_hot_ce, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- ordinary steps, CE and KD


def _models(k: int = 4) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, k))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, k)).eval()
    return student, teacher


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)


def test_ce_ordinary_step_is_cross_entropy():
    student, _ = _models()
    x, y = _batch()
    loss, stats = Step(TrainConfig(), 4)(student, x, y, mixed=False)
    torch.testing.assert_close(loss, F.cross_entropy(student(x), y))
    assert set(stats) == {"loss_ce", "max_logit"}
    torch.testing.assert_close(stats["max_logit"], student(x).max(1).values.mean())


@pytest.mark.parametrize("method", ["kd", "ad"])
def test_distillation_from_itself_is_alpha_ce_times_ce(method):
    student, _ = _models()
    x, y = _batch()
    step = Step(TrainConfig(method=method, teacher="t.pt", alpha_ce=0.95), 4, student)
    loss, stats = step(student, x, y, mixed=False)
    assert stats["loss_dist"].item() == pytest.approx(0.0, abs=1e-5)
    torch.testing.assert_close(loss, 0.95 * F.cross_entropy(student(x), y), atol=1e-5, rtol=1e-5)


def test_mixed_ce_at_lam_one_is_cross_entropy():
    logits, y = torch.randn(8, 4), torch.randint(0, 4, (8,))
    torch.testing.assert_close(mixed_ce(logits, y, torch.randperm(8), 1.0), F.cross_entropy(logits, y))


@pytest.mark.parametrize("method", ["ce", "kd"])
def test_mixed_step_terms_sum_to_the_loss(method):
    student, teacher = _models()
    x, y = _batch()
    step = Step(TrainConfig(method=method, mix="cutmix", teacher="t.pt" if method == "kd" else None), 4, teacher)
    x_mix, perm = x.flip(0), torch.arange(15, -1, -1)
    step.mix = lambda x, alpha: (x_mix, perm, 0.4)
    loss, stats = step(student, x, y, mixed=True)
    s = student(x_mix)
    torch.testing.assert_close(stats["loss_ce"], 0.4 * F.cross_entropy(s, y) + 0.6 * F.cross_entropy(s, y[perm]))
    torch.testing.assert_close(loss, sum(v for k, v in stats.items() if k.startswith("loss_")))
    assert ("loss_dist" in stats) == (method == "kd")


def test_epoch_terms_average_each_step_kind_apart():
    terms = EpochTerms()
    terms.add(False, {"loss_ce": torch.tensor(1.0), "max_logit": torch.tensor(3.0)})
    terms.add(False, {"loss_ce": torch.tensor(2.0), "max_logit": torch.tensor(5.0)})
    terms.add(True, {"loss_dist_raw_pair": torch.tensor(0.5), "learnable_fraction": torch.tensor(0.25)})
    assert terms.means() == {"ordinary": {"loss_ce": 1.5, "max_logit": 4.0},
                             "mixed": {"loss_dist_raw_pair": 0.5, "learnable_fraction": 0.25}}
    assert EpochTerms().means() == {}


def test_mixed_step_draw_is_repeatable():
    # the real cutmix draw, seeded the way the trainer seeds every epoch
    student, teacher = _models()
    x, y = _batch()
    cfg = TrainConfig(method="ad", mix="cutmix", teacher="t.pt")
    out = []
    for _ in range(2):
        torch.manual_seed(1)
        np.random.seed(1)
        out.append(Step(cfg, 4, teacher)(student, x, y, mixed=True)[0])
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)


def test_lr_schedule_known_answers():
    """Linear warm-up over warmup_epochs, then x lr_gamma at 30 %, 60 % and 80 % of the steps."""
    from osr.train.trainer import lr_factor

    cfg = TrainConfig(epochs=10, warmup_epochs=1.0, lr_milestones=(0.3, 0.6, 0.8), lr_gamma=0.2)
    factors = {step: lr_factor(step, 100, cfg) for step in (0, 49, 99, 100, 299, 300, 599, 600, 799, 800, 999)}
    assert factors == pytest.approx({0: 0.01, 49: 0.5, 99: 1.0, 100: 1.0, 299: 1.0, 300: 0.2, 599: 0.2,
                                     600: 0.04, 799: 0.04, 800: 0.008, 999: 0.008})
