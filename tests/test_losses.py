"""Tests for jaxmm.losses: hand-worked values, float64 numpy references, gradients, sharding."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmm import losses

# --------------------------------------------------------------------------------------------
# Independent float64 references (scipy log_softmax, explicit probabilities, analytic grads).


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_infonce(img, txt, logit_scale):
    logits = np.exp(logit_scale) * img @ txt.T
    i2t = -np.mean(np.diag(scipy.special.log_softmax(logits, axis=1)))
    t2i = -np.mean(np.diag(scipy.special.log_softmax(logits, axis=0)))
    return 0.5 * (i2t + t2i)


def np_infonce_grads(img, txt, logit_scale):
    """Analytic gradients: dL/dlogits = (softmax_rows - I + softmax_cols - I) / (2N)."""
    n = img.shape[0]
    sim = img @ txt.T
    logits = np.exp(logit_scale) * sim
    g = (_softmax(logits, 1) + _softmax(logits, 0) - 2 * np.eye(n)) / (2 * n)  # dL/dlogits
    scale = np.exp(logit_scale)
    return scale * g @ txt, scale * g.T @ img, np.sum(g * logits)


def np_siglip(img, txt, logit_scale, logit_bias):
    logits = np.exp(logit_scale) * img @ txt.T + logit_bias
    labels = 2 * np.eye(len(img)) - 1
    # -log sigmoid(z) = log(1 + exp(-z))
    return np.sum(np.log1p(np.exp(-labels * logits))) / len(img)


def np_siglip_grads(img, txt, logit_scale, logit_bias):
    """d/dz of log(1 + e^{-y z}) is -y * sigmoid(-y z); the sum is divided by N."""
    n = img.shape[0]
    scale = np.exp(logit_scale)
    logits = scale * img @ txt.T + logit_bias
    labels = 2 * np.eye(n) - 1
    g = -labels / (1 + np.exp(labels * logits)) / n  # dL/dlogits
    return scale * g @ txt, scale * g.T @ img, np.sum(g * (logits - logit_bias)), np.sum(g)


def _maybe_jit(fn, jit: bool):
    return jax.jit(fn) if jit else fn


# --------------------------------------------------------------------------------------------
# CLIP InfoNCE


@pytest.mark.parametrize("jit", [False, True])
def test_infonce_hand_worked_identity(jit):
    # img = txt = I_2, logit_scale = ln 2 -> logits = 2 * I = [[2, 0], [0, 2]].
    # Every row and column: -log(e^2 / (e^2 + e^0)) = log(1 + e^-2) = 0.126928011...
    eye = jnp.eye(2)
    loss = _maybe_jit(losses.clip_infonce_loss, jit)(eye, eye, math.log(2.0))
    chex.assert_trees_all_close(loss, math.log1p(math.exp(-2.0)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("jit", [False, True])
def test_infonce_hand_worked_asymmetric(jit):
    # img = [[1, 0], [0, 1]], txt = [[1, 0], [1, 0]], s = exp(ln 2) = 2:
    # logits = s * img @ txt.T = [[2, 2], [0, 0]].
    # image->text (rows): row 0 -> -log(e^2 / 2e^2) = log 2; row 1 -> -log(1 / 2) = log 2.
    # text->image (columns): column 0 [2, 0], target 0 -> log(1 + e^-2);
    #                        column 1 [2, 0], target 1 -> log(1 + e^2).
    # loss = (log 2 + (log(1 + e^-2) + log(1 + e^2)) / 2) / 2 = 0.9802196...
    img = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    txt = jnp.array([[1.0, 0.0], [1.0, 0.0]])
    expected = 0.5 * (math.log(2) + 0.5 * (math.log1p(math.exp(-2)) + math.log1p(math.exp(2))))
    loss = _maybe_jit(losses.clip_infonce_loss, jit)(img, txt, math.log(2.0))
    chex.assert_trees_all_close(loss, expected, atol=1e-6, rtol=0)


def test_infonce_matches_numpy_float64():
    rng = np.random.default_rng(0)
    img, txt = _unit_rows(rng, 12, 7), _unit_rows(rng, 12, 7)
    logit_scale = math.log(1 / 0.07)
    loss = losses.clip_infonce_loss(jnp.asarray(img), jnp.asarray(txt), logit_scale)
    assert loss.dtype == jnp.float32 and loss.shape == ()
    chex.assert_trees_all_close(loss, np_infonce(img, txt, logit_scale), rtol=1e-5)


def test_infonce_symmetric_in_towers():
    rng = np.random.default_rng(1)
    img, txt = jnp.asarray(_unit_rows(rng, 9, 5)), jnp.asarray(_unit_rows(rng, 9, 5))
    chex.assert_trees_all_close(
        losses.clip_infonce_loss(img, txt, 3.0), losses.clip_infonce_loss(txt, img, 3.0), rtol=1e-6
    )


def test_infonce_stable_at_large_scale():
    # logit_scale = ln 1e4: exp(logits) overflows float32, log-softmax must not.
    rng = np.random.default_rng(2)
    img, txt = _unit_rows(rng, 6, 4), _unit_rows(rng, 6, 4)
    loss = losses.clip_infonce_loss(jnp.asarray(img), jnp.asarray(txt), math.log(1e4))
    assert np.isfinite(loss)
    chex.assert_trees_all_close(loss, np_infonce(img, txt, math.log(1e4)), rtol=1e-4)


def test_infonce_gradients_match_analytic():
    rng = np.random.default_rng(3)
    img, txt = _unit_rows(rng, 5, 3), _unit_rows(rng, 5, 3)
    logit_scale = 1.3
    grads = jax.jit(jax.grad(losses.clip_infonce_loss, argnums=(0, 1, 2)))(
        jnp.asarray(img), jnp.asarray(txt), jnp.float32(logit_scale)
    )
    chex.assert_trees_all_close(
        grads, np_infonce_grads(img, txt, logit_scale), rtol=1e-5, atol=1e-7
    )


def test_losses_pass_finite_difference_check():
    rng = np.random.default_rng(4)
    img, txt = jnp.asarray(_unit_rows(rng, 3, 4)), jnp.asarray(_unit_rows(rng, 3, 4))
    # float32 central differences: step 1e-2 keeps truncation and rounding errors near 1e-3.
    jax.test_util.check_grads(
        jax.jit(losses.clip_infonce_loss), (img, txt, jnp.float32(0.7)), order=1, modes=("rev",),
        eps=1e-2, atol=2e-3, rtol=2e-3,
    )  # fmt: skip
    jax.test_util.check_grads(
        jax.jit(losses.siglip_loss), (img, txt, jnp.float32(0.7), jnp.float32(-1.0)), order=1,
        modes=("rev",), eps=1e-2, atol=2e-3, rtol=2e-3,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# In-batch accuracy


def test_clip_accuracy_hand_worked():
    # With img = I_3 and txt = S.T, the similarity matrix img @ txt.T is S:
    #   S = [[0.9, 0.1, 0.0],    row argmaxes: 0 (hit), 0 (miss), 2 (hit)  -> i2t = 2/3
    #        [0.8, 0.2, 0.0],    column argmaxes: 0 (hit), 1 (0.2, hit), 2 (hit) -> t2i = 1
    #        [0.0, 0.1, 0.5]]
    sim = jnp.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.0, 0.1, 0.5]])
    i2t, t2i = losses.clip_accuracy(jnp.eye(3), sim.T)
    chex.assert_trees_all_close((i2t, t2i), (2 / 3, 1.0), atol=1e-6, rtol=0)


def test_clip_accuracy_ties_go_to_lowest_index():
    # Both texts identical: image 1's row [1, 1] ties, argmax picks text 0 -> miss.
    i2t, _ = losses.clip_accuracy(jnp.eye(2), jnp.array([[1.0, 1.0], [1.0, 1.0]]))
    chex.assert_trees_all_close(i2t, 0.5, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------
# SigLIP


@pytest.mark.parametrize("jit", [False, True])
def test_siglip_hand_worked(jit):
    # img = txt = I_2, logit_scale = ln 10 (s = 10), bias = -10: logits = 10 * I - 10.
    #   diagonal  z = 0,   label +1: -log sigmoid(0)    = log 2          (2 pairs)
    #   off-diag  z = -10, label -1: -log sigmoid(-10 * -1) = log(1 + e^-10) (2 pairs)
    # loss = (2 log 2 + 2 log(1 + e^-10)) / N, N = 2  ->  log 2 + log(1 + e^-10) = 0.6931926...
    eye = jnp.eye(2)
    loss = _maybe_jit(losses.siglip_loss, jit)(eye, eye, math.log(10.0), -10.0)
    chex.assert_trees_all_close(loss, math.log(2) + math.log1p(math.exp(-10)), atol=1e-6, rtol=0)


def test_siglip_hand_worked_normalised_by_n_not_n_squared():
    # img = txt = I_3, s = 1, b = 0: logits = I.
    #   3 diagonal pairs:     log(1 + e^-1) each
    #   6 off-diagonal pairs: log(1 + e^0) = log 2 each
    # loss = (3 log(1 + e^-1) + 6 log 2) / 3 = log(1 + e^-1) + 2 log 2 = 1.6996...
    eye = jnp.eye(3)
    loss = losses.siglip_loss(eye, eye, 0.0, 0.0)
    chex.assert_trees_all_close(loss, math.log1p(math.exp(-1)) + 2 * math.log(2), atol=1e-6, rtol=0)


def test_siglip_matches_numpy_float64_and_is_symmetric():
    rng = np.random.default_rng(5)
    img, txt = _unit_rows(rng, 10, 6), _unit_rows(rng, 10, 6)
    args = (math.log(10.0), -10.0)
    loss = losses.siglip_loss(jnp.asarray(img), jnp.asarray(txt), *args)
    assert loss.dtype == jnp.float32 and loss.shape == ()
    chex.assert_trees_all_close(loss, np_siglip(img, txt, *args), rtol=1e-5)
    swapped = losses.siglip_loss(jnp.asarray(txt), jnp.asarray(img), *args)
    chex.assert_trees_all_close(loss, swapped, rtol=1e-6)


def test_siglip_gradients_match_analytic():
    rng = np.random.default_rng(6)
    img, txt = _unit_rows(rng, 5, 3), _unit_rows(rng, 5, 3)
    logit_scale, logit_bias = 1.7, -2.0
    grads = jax.jit(jax.grad(losses.siglip_loss, argnums=(0, 1, 2, 3)))(
        jnp.asarray(img), jnp.asarray(txt), jnp.float32(logit_scale), jnp.float32(logit_bias)
    )
    chex.assert_trees_all_close(
        grads, np_siglip_grads(img, txt, logit_scale, logit_bias), rtol=1e-5, atol=1e-7
    )


# --------------------------------------------------------------------------------------------
# Global batch on 8 devices: sharded along the batch axis == one device.


def _data_mesh() -> Mesh:
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py should provide 8 fake CPU devices"
    return Mesh(np.array(devices).reshape(8), ("data",))


@pytest.mark.parametrize(
    "loss_fn, scalars",
    [
        (losses.clip_infonce_loss, (math.log(1 / 0.07),)),
        (losses.siglip_loss, (math.log(10.0), -10.0)),
    ],
    ids=["infonce", "siglip"],
)
def test_sharded_global_batch_matches_single_device(loss_fn, scalars):
    rng = np.random.default_rng(7)
    img, txt = _unit_rows(rng, 32, 16), _unit_rows(rng, 32, 16)  # 4 rows per device
    scalars = tuple(jnp.float32(s) for s in scalars)
    argnums = tuple(range(2 + len(scalars)))
    step = jax.jit(jax.value_and_grad(loss_fn, argnums=argnums))

    sharding = NamedSharding(_data_mesh(), P("data", None))
    img_s, txt_s = jax.device_put(img, sharding), jax.device_put(txt, sharding)
    assert {s.data.shape for s in img_s.addressable_shards} == {(4, 16)}
    assert len(img_s.addressable_shards) == 8
    sharded = step(img_s, txt_s, *scalars)

    one = jax.devices()[0]
    single = step(jax.device_put(img, one), jax.device_put(txt, one), *scalars)

    # Losses agree to 1e-6 relative; gradient entries are O(0.1) and summed in a different
    # order across shards, so entries near zero get an absolute floor of 1e-7.
    chex.assert_trees_all_close(sharded[0], single[0], rtol=1e-6, atol=0)
    chex.assert_trees_all_close(sharded[1], single[1], rtol=1e-6, atol=1e-7)
    # And both are the global-batch loss, not an average of per-device losses.
    reference = (
        np_infonce(img, txt, *scalars) if len(scalars) == 1 else np_siglip(img, txt, *scalars)
    )
    chex.assert_trees_all_close(sharded[0], reference, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# bf16 inputs are upcast


@pytest.mark.parametrize(
    "loss_fn, scalars",
    [(losses.clip_infonce_loss, (math.log(100.0),)), (losses.siglip_loss, (math.log(10.0), -10.0))],
    ids=["infonce", "siglip"],
)
def test_bf16_inputs_give_float32_loss(loss_fn, scalars):
    # Eager on purpose: under jit, XLA:CPU folds a bf16 dot followed by an upcast into a
    # float32 dot, which would hide a missing upcast in the loss.
    rng = np.random.default_rng(8)
    img = jnp.asarray(_unit_rows(rng, 16, 32), jnp.bfloat16)
    txt = jnp.asarray(_unit_rows(rng, 16, 32), jnp.bfloat16)
    loss = loss_fn(img, txt, *scalars)
    assert loss.dtype == jnp.float32 and np.isfinite(loss)
    # Computing on the float32 upcast of the same values gives the same number; a bf16
    # matmul would round the logits (scale 100) by ~0.1 and miss this tolerance.
    upcast = loss_fn(img.astype(jnp.float32), txt.astype(jnp.float32), *scalars)
    chex.assert_trees_all_close(loss, upcast, rtol=1e-6)
    grads = jax.grad(loss_fn, argnums=(0, 1))(img, txt, *scalars)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="same shape"):
        losses.clip_infonce_loss(jnp.ones((4, 3)), jnp.ones((5, 3)), 1.0)


# --------------------------------------------------------------------------------------------
# Softmax cross-entropy


def test_softmax_cross_entropy_hand_worked():
    # Row 0: logits [ln 3, 0] -> p = [3/4, 1/4], label 0 -> -log(3/4) = log(4/3).
    # Row 1: logits [0, 0]    -> p = [1/2, 1/2], label 1 -> log 2.
    logits = jnp.array([[math.log(3.0), 0.0], [0.0, 0.0]])
    labels = jnp.array([0, 1])
    loss = losses.softmax_cross_entropy(logits, labels)
    chex.assert_trees_all_close(loss, (math.log(4 / 3) + math.log(2)) / 2, atol=1e-6, rtol=0)


def test_softmax_cross_entropy_label_smoothing_hand_worked():
    # a = 0.2, C = 2: targets (1 - a) * one_hot + a / 2 -> [0.9, 0.1] for label 0.
    # Row 0 (p = [3/4, 1/4]): -(0.9 log 3/4 + 0.1 log 1/4) = 0.9 log(4/3) + 0.1 log 4.
    # Row 1 (p = [1/2, 1/2]): -(0.1 + 0.9) log 1/2 = log 2.
    logits = jnp.array([[math.log(3.0), 0.0], [0.0, 0.0]])
    labels = jnp.array([0, 1])
    loss = losses.softmax_cross_entropy(logits, labels, label_smoothing=0.2)
    expected = (0.9 * math.log(4 / 3) + 0.1 * math.log(4) + math.log(2)) / 2
    chex.assert_trees_all_close(loss, expected, atol=1e-6, rtol=0)


def test_softmax_cross_entropy_matches_numpy_and_upcasts_bf16():
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(7, 5)) * 3
    labels = rng.integers(0, 5, size=7)
    expected = -np.mean(np.log(_softmax(logits, 1)[np.arange(7), labels]))
    loss = losses.softmax_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
    chex.assert_trees_all_close(loss, expected, rtol=1e-5)
    loss_bf16 = losses.softmax_cross_entropy(jnp.asarray(logits, jnp.bfloat16), labels)
    assert loss_bf16.dtype == jnp.float32 and np.isfinite(loss_bf16)
