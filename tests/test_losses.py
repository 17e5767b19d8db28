import pytest
import torch
import torch.nn.functional as F

from osr.train.losses import dist_loss, dist_to_probs, learnable_mask, soft_cross_entropy, two_hot

H4 = torch.tensor([[1.0, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]])


def _probs_from_pattern(row_pattern, sign=1.0):
    # p[i, c] = 1/4 + 0.1 * h[i] * h[c]: rows sum to 1 because h sums to 0
    return 0.25 + sign * 0.1 * torch.outer(row_pattern, row_pattern)


def test_dist_is_zero_for_equal_logits():
    a = torch.randn(8, 5)
    assert dist_loss(a, a.clone()).item() == pytest.approx(0.0, abs=1e-5)


def test_dist_ignores_a_per_row_constant_added_to_logits():
    a = torch.randn(8, 5)
    assert dist_loss(a, a + torch.randn(8, 1) * 10).item() == pytest.approx(0.0, abs=1e-5)


def test_dist_is_two_for_uncorrelated_distributions():
    # Hadamard rows h1, h2 are zero-mean and orthogonal, so with p = 1/4 + 0.1 h1 h1^T and
    # q = 1/4 + 0.1 h2 h2^T every row pair and every column pair has Pearson correlation 0
    # exactly: inter = intra = 1, DIST = 2 up to float error and the 1e-8 eps.
    p = _probs_from_pattern(H4[1])
    q = _probs_from_pattern(H4[2])
    assert dist_loss(p.log(), q.log()).item() == pytest.approx(2.0, abs=1e-5)


def test_dist_is_four_for_anticorrelated_and_weights_apply():
    p = _probs_from_pattern(H4[1])
    q = _probs_from_pattern(H4[1], sign=-1.0)
    assert dist_loss(p.log(), q.log()).item() == pytest.approx(4.0, abs=1e-5)
    assert dist_loss(p.log(), q.log(), beta=1.0, gamma=0.0).item() == pytest.approx(2.0, abs=1e-5)


def test_dist_tau_scales_by_tau_squared_on_tempered_logits():
    a, b = torch.randn(6, 5), torch.randn(6, 5)
    expected = 4.0 * dist_loss(a / 2.0, b / 2.0)
    torch.testing.assert_close(dist_loss(a, b, tau=2.0), expected)


def test_dist_one_sample_is_finite_with_gradient():
    a = torch.randn(1, 5, requires_grad=True)
    loss = dist_loss(a, torch.randn(1, 5))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(torch.isfinite(a.grad)) and a.grad.abs().sum() > 0
    # only the inter term: 1 - Pearson(p, q) across classes
    assert 0.0 <= loss.item() <= 2.0


def test_dist_empty_batch_is_zero_and_differentiable():
    a = torch.randn(0, 5, requires_grad=True)
    loss = dist_loss(a, torch.randn(0, 5))
    assert loss.item() == 0.0
    loss.backward()
    assert a.grad.shape == (0, 5)


def test_dist_to_probs_is_two_for_uncorrelated_and_four_for_anticorrelated_targets():
    # the Hadamard patterns of the DIST tests above, the target given as probabilities
    p = _probs_from_pattern(H4[1])
    assert dist_to_probs(p.log(), _probs_from_pattern(H4[2])).item() == pytest.approx(2.0, abs=1e-5)
    assert dist_to_probs(p.log(), _probs_from_pattern(H4[1], sign=-1.0)).item() == pytest.approx(4.0, abs=1e-5)
    assert dist_to_probs(p.log(), p).item() == pytest.approx(0.0, abs=1e-5)


def test_dist_to_probs_of_the_teacher_softmax_equals_dist_loss():
    a, b = torch.randn(6, 5), torch.randn(6, 5)
    for tau in (1.0, 2.0):
        torch.testing.assert_close(dist_to_probs(a, F.softmax(b / tau, dim=1), 0.5, 2.0, tau),
                                   dist_loss(a, b, 0.5, 2.0, tau))


def test_dist_to_probs_of_a_mixture_is_not_the_mixture_of_dists():
    # the lambda-weighted target lam*q1 + (1-lam)*q2 is one distribution: DIST to it is 0 for a
    # student predicting it, although that student is at DIST > 0 from q1 and from q2
    q1, q2 = _probs_from_pattern(H4[1]), _probs_from_pattern(H4[2])
    mix = 0.3 * q1 + 0.7 * q2
    assert dist_to_probs(mix.log(), mix).item() == pytest.approx(0.0, abs=1e-5)
    assert dist_to_probs(mix.log(), q1).item() > 0.5 and dist_to_probs(mix.log(), q2).item() > 0.1


def test_dist_to_probs_empty_batch_is_zero_and_differentiable():
    a = torch.randn(0, 5, requires_grad=True)
    loss = dist_to_probs(a, torch.zeros(0, 5))
    assert loss.item() == 0.0
    loss.backward()


def test_two_hot_rows_sum_to_one_and_r_zero_is_exact_mix():
    y, y_perm = torch.tensor([0, 2, 1]), torch.tensor([1, 2, 0])
    q = two_hot(y, y_perm, lam=0.3, num_classes=4)
    torch.testing.assert_close(q.sum(1), torch.ones(3))
    exact = two_hot(y, y_perm, lam=0.3, num_classes=4, r=0.0)
    expected = torch.tensor([[0.3, 0.7, 0, 0], [0, 0, 1.0, 0], [0.7, 0.3, 0, 0]])
    torch.testing.assert_close(exact, expected)
    # r = 0.75: 0.75/4 = 0.1875 everywhere plus 0.25 of the mix
    torch.testing.assert_close(q[0], torch.tensor([0.1875 + 0.075, 0.1875 + 0.175, 0.1875, 0.1875]))


def test_soft_cross_entropy_matches_cross_entropy_for_one_hot():
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    torch.testing.assert_close(soft_cross_entropy(logits, F.one_hot(y, 4).float()), F.cross_entropy(logits, y))


def test_soft_cross_entropy_empty_is_zero_and_differentiable():
    logits = torch.randn(0, 4, requires_grad=True)
    loss = soft_cross_entropy(logits, torch.zeros(0, 4))
    assert loss.item() == 0.0
    loss.backward()


def test_learnable_mask_on_hand_made_teacher_output():
    teacher = torch.tensor(
        [
            [5.0, 1.0, 0.0],  # top-1 = 0 = y
            [0.0, 1.0, 5.0],  # top-1 = 2 = y_perm
            [0.0, 5.0, 1.0],  # top-1 = 1, neither
            [1.0, 0.0, 0.5],  # top-1 = 0, neither
        ]
    )
    y, y_perm = torch.tensor([0, 1, 0, 2]), torch.tensor([1, 2, 2, 1])
    assert learnable_mask(teacher, y, y_perm).tolist() == [True, True, False, False]
