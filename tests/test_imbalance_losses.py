"""Losses for class imbalance against hand-worked numbers and torchvision's sigmoid focal loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxmm import losses
from jaxmm.train import classification_losses
from jaxmm.train.objectives import Classification

# Two classes with logits (ln 3, 0): softmax probabilities 3/4 and 1/4.
TWO_CLASS_LOGITS = jnp.array([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
LABELS_0_1 = jnp.array([0, 1])


def test_softmax_focal_hand_worked():
    loss = losses.softmax_focal_loss(TWO_CLASS_LOGITS, LABELS_0_1, gamma=2.0)
    # p_y = 3/4: (1/4)^2 * ln(4/3); p_y = 1/4: (3/4)^2 * ln 4.
    expected = [0.0625 * 0.28768207, 0.5625 * 1.38629436]
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_softmax_focal_with_gamma_0_is_the_cross_entropy():
    logits = jax.random.normal(jax.random.key(0), (16, 7)) * 3
    labels = jax.random.randint(jax.random.key(1), (16,), 0, 7)
    np.testing.assert_allclose(
        losses.softmax_focal_loss(logits, labels, gamma=0.0),
        losses.softmax_cross_entropy_per_example(logits, labels),
        rtol=1e-6,
    )


def test_sigmoid_focal_hand_worked():
    # Logits 0: p = 1/2 for both classes, each term ln 2 * (1/2)^2; alpha 0.25 on the
    # positive, 0.75 on the negative: (0.25 + 0.75) * ln 2 / 4.
    loss = losses.sigmoid_focal_loss(jnp.zeros((1, 2)), jnp.array([0]), gamma=2.0, alpha=0.25)
    np.testing.assert_allclose(loss, [math.log(2.0) / 4], rtol=1e-6)


@pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (0.0, 0.5), (1.5, -1.0)])
def test_sigmoid_focal_matches_torchvision(gamma, alpha):
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4.0, size=(32, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=32)
    targets = np.eye(10, dtype=np.float32)[labels]
    reference = ops.sigmoid_focal_loss(
        torch.from_numpy(logits),
        torch.from_numpy(targets),
        alpha=alpha,
        gamma=gamma,
        reduction="none",
    ).sum(-1)
    ours = losses.sigmoid_focal_loss(jnp.asarray(logits), jnp.asarray(labels), gamma, alpha)
    np.testing.assert_allclose(ours, reference.numpy(), rtol=1e-5, atol=1e-6)


def test_class_balanced_weights_hand_worked():
    # beta = 0.999: effective numbers (1 - beta^n) / (1 - beta) are 393.621 (n=500),
    # 48.794 (n=50), 4.990 (n=5) and 1 (an absent class counts as one example); weights are
    # their inverses scaled to sum to C = 4.
    inverse = np.array([1 / 393.621, 1 / 48.794, 1 / 4.990, 1.0])
    expected = inverse * 4 / inverse.sum()
    weights = losses.class_balanced_weights(np.array([500, 50, 5, 0]), beta=0.999)
    np.testing.assert_allclose(weights, expected, rtol=1e-4)
    np.testing.assert_allclose(weights.sum(), 4.0, rtol=1e-6)
    # beta = 0 weighs every class alike; beta near 1 tends to inverse frequency.
    np.testing.assert_allclose(losses.class_balanced_weights(np.array([500, 5]), 0.0), [1, 1])
    near_one = losses.class_balanced_weights(np.array([500, 5]), 1 - 1e-7)
    np.testing.assert_allclose(near_one[1] / near_one[0], 100.0, rtol=1e-3)


def test_logit_adjusted_hand_worked():
    # Logits 0 shifted by ln(0.8), ln(0.2): softmax (0.8, 0.2), so the losses are -ln 0.8
    # and -ln 0.2.
    log_priors = losses.log_class_priors(np.array([8, 2]))
    np.testing.assert_allclose(log_priors, [math.log(0.8), math.log(0.2)], rtol=1e-6)
    loss = losses.logit_adjusted_cross_entropy(jnp.zeros((2, 2)), LABELS_0_1, log_priors)
    np.testing.assert_allclose(loss, [0.22314355, 1.60943791], rtol=1e-6)
    # tau scales the shift; tau = 0 is the plain cross-entropy.
    plain = losses.logit_adjusted_cross_entropy(TWO_CLASS_LOGITS, LABELS_0_1, log_priors, 0.0)
    np.testing.assert_allclose(plain, [0.28768207, 1.38629436], rtol=1e-6)


def test_logit_adjustment_gradient_is_finite_for_a_class_without_examples():
    log_priors = losses.log_class_priors(np.array([10, 0, 3]))
    grad = jax.grad(
        lambda x: losses.logit_adjusted_cross_entropy(x, jnp.array([0, 2]), log_priors).sum()
    )(jnp.zeros((2, 3)))
    assert np.isfinite(grad).all()


def _config(**fields) -> ConfigDict:
    return ConfigDict(fields)


def test_default_example_losses_are_the_cross_entropy_and_loss_is_their_mean():
    logits = jax.random.normal(jax.random.key(2), (8, 5))
    labels = jnp.arange(8) % 5
    objective = Classification(label_smoothing=0.1)
    per_example = objective.example_losses(logits, labels)
    np.testing.assert_allclose(
        per_example, losses.softmax_cross_entropy_per_example(logits, labels, 0.1), rtol=1e-6
    )
    loss, _ = objective.loss(logits, {"label": labels})
    np.testing.assert_allclose(loss, per_example.mean(), rtol=1e-6)
    np.testing.assert_allclose(loss, losses.softmax_cross_entropy(logits, labels, 0.1), rtol=1e-6)


def test_class_balanced_weighs_its_base_loss_by_class():
    counts = np.array([500, 50, 5])
    logits = jax.random.normal(jax.random.key(3), (6, 3))
    labels = jnp.array([0, 1, 2, 2, 1, 0])
    weights = losses.class_balanced_weights(counts, 0.99)
    for base, plain in [
        ("softmax_ce", losses.softmax_cross_entropy_per_example(logits, labels)),
        ("focal", losses.softmax_focal_loss(logits, labels, 1.0)),
        ("sigmoid_focal", losses.sigmoid_focal_loss(logits, labels, 1.0, 0.25)),
    ]:
        loss_fn = classification_losses.make_example_loss(
            _config(name="class_balanced", base=base, beta=0.99, gamma=1.0, alpha=0.25),
            class_counts=counts,
        )
        np.testing.assert_allclose(loss_fn(logits, labels), weights[labels] * plain, rtol=1e-6)


@pytest.mark.parametrize(
    "fields, smoothing, culprit",
    [
        (dict(name="focall"), 0.0, "classification_loss.name 'focall'"),
        (dict(name="class_balanced", base="logit_adjusted"), 0.0, "classification_loss.base"),
        (dict(name="focal"), 0.1, "label_smoothing=0.1"),
        (dict(name="class_balanced", beta=1.0), 0.0, "classification_loss.beta"),
        (dict(name="focal", gamma=-1.0), 0.0, "classification_loss.gamma"),
    ],
)
def test_bad_loss_settings_name_the_culprit(fields, smoothing, culprit):
    with pytest.raises(ValueError, match=culprit.replace(".", r"\.")) as error:
        classification_losses.make_example_loss(_config(**fields), smoothing, np.array([3, 1]))
    assert "\n" not in str(error.value)
