"""Numerics of the linear probe (against scipy's L-BFGS-B) and of the k-shot prototypes."""

import numpy as np
import pytest
import scipy.optimize

from jaxmm.evaluate import few_shot
from jaxmm.evaluate import linear_probe as lp

N, D, C = 240, 12, 4


def _clusters(seed: int, spread: float, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """`n` normalised features around C class directions; `spread` sets the overlap."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(C, size=n)
    features = np.eye(C, D)[labels] + spread * rng.normal(size=(n, D))
    return lp.l2_normalize(features), labels


def _scipy_fit(features, labels, c):
    """The same objective in float64 numpy, with its analytic gradient, solved by L-BFGS-B."""
    n = len(labels)
    onehot = np.eye(C)[labels]

    def loss_and_grad(theta):
        weights, bias = theta[: D * C].reshape(D, C), theta[D * C :]
        z = features @ weights + bias
        z -= z.max(axis=1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -np.mean(np.sum(onehot * log_probs, axis=1)) + np.sum(weights**2) / (2 * c * n)
        residual = (np.exp(log_probs) - onehot) / n  # d mean-CE / d logits
        grad_w = features.T @ residual + weights / (c * n)
        return loss, np.concatenate([grad_w.ravel(), residual.sum(axis=0)])

    result = scipy.optimize.minimize(
        loss_and_grad,
        np.zeros(D * C + C),
        jac=True,
        method="L-BFGS-B",
        options=dict(maxiter=10_000, ftol=1e-15, gtol=1e-10),
    )
    assert result.success, result.message
    return result.x[: D * C].reshape(D, C), result.x[D * C :], result.fun


@pytest.mark.parametrize("c", [1e-4, 0.01, 1.0, 100.0])
def test_lbfgs_matches_scipy(c):
    features, labels = _clusters(seed=0, spread=0.6)
    params = lp.fit_logistic_regression(features, labels, C, c)
    weights, bias, loss = _scipy_fit(features.astype(np.float64), labels, c)
    # Both solvers start at zero and step along gradients, whose bias part sums to zero, so
    # both stay on the same sum-zero bias among the softmax's equivalent ones.
    scale = max(np.abs(weights).max(), 1.0)
    # Reached (float32 vs float64): weights <= 7.1e-6, bias <= 1.7e-6 of the largest weight;
    # loss <= 6.2e-8 relative.
    np.testing.assert_allclose(params["weights"], weights, rtol=0, atol=5e-5 * scale)
    np.testing.assert_allclose(params["bias"], bias, rtol=0, atol=5e-5 * scale)
    jax_loss = float(lp.objective(params, features, labels, c))
    assert jax_loss == pytest.approx(loss, rel=1e-6, abs=1e-6)


def test_separable_toy_problem_is_solved_exactly():
    train, val, test = (_clusters(seed, spread=0.05) for seed in (1, 2, 3))
    metrics = lp.linear_probe(train, val, test, C)
    assert metrics["top1"] == 1.0
    assert 1e-6 <= metrics["C"] <= 1e6


def test_sweep_is_the_papers_search():
    train, val = _clusters(seed=4, spread=0.9), _clusters(seed=5, spread=0.9, n=120)
    best, scores = lp.sweep_c(train, val, C)
    log10_c = np.log10(sorted(scores))
    assert set(lp.COARSE_LOG10_C) <= {round(x, 6) for x in log10_c}
    # Refinement halves 2 decades four times: every C lies on the 1/8-decade grid, in range.
    np.testing.assert_allclose(log10_c * 8, np.round(log10_c * 8), atol=1e-9)
    assert -6 <= log10_c.min() and log10_c.max() <= 6
    assert len(scores) <= len(lp.COARSE_LOG10_C) + 2 * 4
    # The winner has the best accuracy, the smallest C among equals.
    top = max(scores.values())
    assert best == min(c for c, acc in scores.items() if acc == top)
    # The search refined around its winner down to the final resolution.
    neighbours = [best * 10 ** (s / 8) for s in (-1, 1)]
    assert all(np.isclose(list(scores), c).any() for c in neighbours if 1e-6 <= c <= 1e6)


def test_k_shot_sampling_is_seeded_and_balanced():
    labels = np.repeat(np.arange(3), [5, 4, 6])
    chosen = few_shot.sample_k_per_class(labels, 2, 3, seed=7)
    np.testing.assert_array_equal(labels[chosen], [0, 0, 1, 1, 2, 2])
    assert len(set(chosen.tolist())) == 6
    np.testing.assert_array_equal(chosen, few_shot.sample_k_per_class(labels, 2, 3, seed=7))
    assert not np.array_equal(chosen, few_shot.sample_k_per_class(labels, 2, 3, seed=8))
    with pytest.raises(ValueError, match=r"5-shot .* classes \[1\] have \[4\]"):
        few_shot.sample_k_per_class(labels, 5, 3, seed=0)


def test_prototypes_hand_worked():
    # Class 0: (3, 4) and (0, 2) normalise to (0.6, 0.8) and (0, 1); mean (0.3, 0.9),
    # renormalised (1, 3) / sqrt(10). Class 1: a single (-2, 0) -> (-1, 0).
    features = np.array([[3.0, 4.0], [0.0, 2.0], [-2.0, 0.0]])
    protos = few_shot.prototypes(features, np.array([0, 0, 1]), 2)
    np.testing.assert_allclose(protos, [[1 / np.sqrt(10), 3 / np.sqrt(10)], [-1, 0]], rtol=1e-6)


def test_few_shot_metrics_on_clusters():
    train, test = _clusters(seed=6, spread=0.05), _clusters(seed=7, spread=0.05)
    metrics = few_shot.few_shot_metrics(train, test, C, shots=(1, 5))
    assert metrics == {"k1_top1": 1.0, "k5_top1": 1.0}
