"""Gradient accumulation (`grad_accum_steps`): the same loss and update as one big batch.

Contrastive objectives take the cached-output path (all N in-batch negatives), the others
weighted micro-batches; both are compared with the unaccumulated step on one device and on
8 (tests/conftest.py), in float32 with tolerance 1e-5. Plain SGD with learning rate 1 makes
the parameter change the gradient itself.
"""

import chex
import jax
import numpy as np
import optax
import pytest
from flax import linen as nn

from jaxmm import sharding
from jaxmm.models import create_model
from jaxmm.train import accumulation
from jaxmm.train.objectives import Captioning, Classification, Contrastive
from jaxmm.train.state import create_train_state
from jaxmm.train.steps import make_train_step

BATCH = 32
TOLERANCE = 1e-5


def tokens(rng: np.random.Generator, vocab: int, length: int = 16) -> np.ndarray:
    ids = rng.integers(1, vocab - 1, size=(BATCH, length)).astype(np.int32)
    ids[np.arange(BATCH), rng.integers(4, length, size=BATCH)] = vocab - 1  # EOT, the largest id
    return ids


def one_step(model, objective, batch, k: int, num_devices: int, tx=None):
    """`(state before, state after, metrics)` of one train step with `k` micro-batches."""
    tx = tx or optax.sgd(1.0)
    mesh = sharding.make_mesh({"data": num_devices}, jax.devices()[:num_devices])
    inputs = objective.inputs({key: value[:1] for key, value in batch.items()})
    state, shardings = create_train_state(lambda rng: model.init(rng, *inputs), tx, mesh, seed=0)
    batch_sharding = sharding.batch_sharding(mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        step = jax.jit(
            make_train_step(model, tx, objective, optax.constant_schedule(1.0), grad_accum_steps=k),
            in_shardings=(shardings, batch_sharding),
            out_shardings=(shardings, None),
        )
        new_state, metrics = step(state, jax.device_put(batch, batch_sharding))
    return jax.device_get(state), jax.device_get(new_state), jax.device_get(metrics)


def assert_same_step(model, objective, batch, k: int, num_devices: int, metric_keys=()):
    _, reference, reference_metrics = one_step(model, objective, batch, 1, num_devices)
    _, accumulated, metrics = one_step(model, objective, batch, k, num_devices)
    chex.assert_trees_all_close(accumulated.params, reference.params, atol=TOLERANCE)
    for key in ("loss", "grad_norm", *metric_keys):
        np.testing.assert_allclose(metrics[key], reference_metrics[key], rtol=TOLERANCE)


@pytest.fixture(scope="module")
def clip_batch():
    rng = np.random.default_rng(0)
    return {
        "image": rng.normal(size=(BATCH, 32, 32, 3)).astype(np.float32),
        "tokens": tokens(rng, 512),
    }


@pytest.mark.parametrize(
    "loss_name, loss_impl, k, num_devices",
    [
        # 4 micro-batches of 8: a micro-batch loss would see 7 negatives, not 31, and differ.
        ("infonce", "global", 4, 8),
        ("siglip", "global", 2, 1),
        ("infonce", "ring", 2, 8),  # the blockwise loss (chunks inside the device ring)
    ],
)
def test_contrastive_accumulation_keeps_every_negative(
    clip_batch, loss_name, loss_impl, k, num_devices
):
    overrides = {"init_logit_bias": -5.0} if loss_name == "siglip" else {}
    model = create_model("clip_test", **overrides)
    objective = Contrastive(loss_name, loss_impl, chunk_size=8)
    assert_same_step(model, objective, clip_batch, k, num_devices, ("i2t_accuracy",))


def test_classification_accumulation_equals_one_big_batch():
    rng = np.random.default_rng(1)
    batch = {
        "image": rng.normal(size=(BATCH, 32, 32, 3)).astype(np.float32),
        "label": rng.integers(0, 10, size=BATCH).astype(np.int32),
    }
    model = create_model("vit_test")
    assert_same_step(model, Classification(label_smoothing=0.1), batch, 4, 8, ("accuracy",))


def test_captioning_accumulation_weighs_micro_batches_by_their_tokens():
    rng = np.random.default_rng(2)
    targets = rng.integers(1, 599, size=(BATCH, 16)).astype(np.int32)
    # Captions of very different lengths, so micro-batches hold different token counts and
    # an unweighted mean of micro-batch losses would differ from the batch's.
    lengths = np.where(np.arange(BATCH) % 4 == 0, 15, 2)
    targets[np.arange(16)[None, :] >= lengths[:, None]] = 0
    batch = {
        "image": rng.normal(size=(BATCH, 32, 32, 3)).astype(np.float32),
        "tokens": np.roll(targets, 1, axis=1),
        "targets": targets,
    }
    model = create_model("captioner_test")
    assert_same_step(model, Captioning(), batch, 4, 1, ("token_accuracy",))


def test_batchnorm_statistics_are_updated_once_per_micro_batch():
    """BatchNorm normalises each micro-batch with its own statistics and updates the
    running statistics k times, in micro-batch order (as PyTorch does under accumulation)."""
    rng = np.random.default_rng(3)
    batch = {
        "image": rng.normal(size=(16, 32, 32, 3)).astype(np.float32) * 2 + 1,
        "label": rng.integers(0, 10, size=16).astype(np.int32),
    }
    model = create_model("resnet18", num_classes=10, width=8, stem="cifar", stage_sizes=(1, 1))
    before, after, _ = one_step(model, Classification(), batch, 2, 1)

    micro = accumulation.split_micro_batches(batch, 2)
    stats = before.model_state
    for j in range(2):
        _, stats = model.apply(
            {"params": before.params, **stats},
            micro["image"][j],
            train=True,
            mutable=list(stats),
        )
    chex.assert_trees_all_close(after.model_state, dict(stats), atol=1e-6)


def test_micro_batches_are_strided_and_merge_back_in_order():
    batch = {"x": np.arange(12).reshape(12, 1)}
    micro = accumulation.split_micro_batches(batch, 3)
    np.testing.assert_array_equal(micro["x"][1, :, 0], [1, 4, 7, 10])
    merged = accumulation.merge_micro_outputs({"x": micro["x"], "scale": np.full(3, 7.0)})
    np.testing.assert_array_equal(merged["x"], batch["x"])
    assert merged["scale"] == 7.0
    with pytest.raises(ValueError, match="does not split into 5"):
        accumulation.split_micro_batches(batch, 5)
