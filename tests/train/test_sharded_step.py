"""The train step gives the same loss, gradients and update on 1 device and on 8.

The contrastive loss must see the global batch whatever the mesh: with 8 fake CPU
devices (tests/conftest.py) the batch is split 8 ways (data parallel), or the
parameters and optimizer state are sharded too (FSDP), and the results must equal
a single device's within float32 round-off.
"""

import chex
import jax
import numpy as np
import optax
import pytest
from flax import linen as nn

from jaxmm import sharding
from jaxmm.models import create_model
from jaxmm.train.objectives import Classification, Contrastive, contrastive_loss
from jaxmm.train.state import create_train_state
from jaxmm.train.steps import make_train_step

BATCH = 16


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 500, size=(BATCH, 16)).astype(np.int32)
    tokens[np.arange(BATCH), rng.integers(4, 16, size=BATCH)] = 511  # EOT, the largest id
    return {"image": rng.normal(size=(BATCH, 32, 32, 3)).astype(np.float32), "tokens": tokens}


def run_on_mesh(mesh_shape, devices, batch, loss_name="infonce"):
    overrides = {"init_logit_bias": -5.0} if loss_name == "siglip" else {}
    model = create_model("clip_test", **overrides)
    # Plain SGD: Adam's first step is lr * sign(gradient), which would blow float32
    # noise on exactly-zero gradients (the key bias) up to full-size updates.
    tx = optax.sgd(0.1)
    mesh = sharding.make_mesh(mesh_shape, devices)
    state, shardings = create_train_state(
        lambda rng: model.init(rng, batch["image"][:1], batch["tokens"][:1]),
        tx,
        mesh,
        seed=0,
    )
    batch_sharding = sharding.batch_sharding(mesh)
    sharded = jax.device_put(batch, batch_sharding)

    def loss_fn(params, batch):
        output = model.apply({"params": params}, batch["image"], batch["tokens"])
        return contrastive_loss(loss_name, output)

    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        loss, grads = jax.jit(jax.value_and_grad(loss_fn))(state.params, sharded)
        step = jax.jit(
            make_train_step(model, tx, Contrastive(loss_name), optax.constant_schedule(1e-3)),
            in_shardings=(shardings, batch_sharding),
            out_shardings=(shardings, None),
        )
        new_state, _ = step(state, sharded)
    return jax.device_get((loss, grads, new_state.params)), new_state.params


@pytest.fixture(scope="module")
def one_device(batch):
    return {
        loss: run_on_mesh({"data": 1}, jax.devices()[:1], batch, loss)[0]
        for loss in ("infonce", "siglip")
    }


@pytest.mark.parametrize(
    "mesh_shape, loss_name",
    [
        ({"data": 8}, "infonce"),
        ({"fsdp": 8}, "infonce"),
        ({"data": 2, "fsdp": 2, "model": 2}, "infonce"),
        ({"data": 2, "fsdp": 2, "model": 2}, "siglip"),
    ],
)
def test_eight_devices_match_one(batch, one_device, mesh_shape, loss_name):
    assert jax.device_count() == 8, "tests/conftest.py should provide 8 fake CPU devices"
    loss1, grads1, params1 = one_device[loss_name]
    (loss8, grads8, params8), placed = run_on_mesh(mesh_shape, jax.devices(), batch, loss_name)
    # Tolerance 1e-5 (relative, with a 1e-5 absolute floor for entries near zero):
    # the sharded reductions sum in another order; float32 round-off is ~1e-6 here.
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    chex.assert_trees_all_close(grads8, grads1, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(params8, params1, rtol=1e-5, atol=1e-5)
    if "fsdp" in mesh_shape:
        # FSDP really shards: a kernel with an `embed` dimension lives in pieces.
        kernel = placed["image_tower"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
        assert len({str(shard.index) for shard in kernel.addressable_shards}) > 1


def test_train_step_compiles_once(batch):
    model = create_model("clip_test")
    tx = optax.sgd(1e-2)
    mesh = sharding.make_mesh({"data": -1})
    state, shardings = create_train_state(
        lambda rng: model.init(rng, batch["image"][:1], batch["tokens"][:1]),
        tx,
        mesh,
        seed=0,
    )
    step = jax.jit(
        chex.assert_max_traces(
            make_train_step(model, tx, Contrastive("infonce"), optax.constant_schedule(1e-2)), n=1
        ),
        in_shardings=(shardings, sharding.batch_sharding(mesh)),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        losses = []
        for _ in range(3):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
    assert int(state.step) == 3
    assert losses[-1] < losses[0]  # the same batch thrice: the loss must fall


def test_logit_scale_is_clamped_after_the_update(batch):
    # Start above the ceiling: whatever the small update does, the clamp brings it to ln 100.
    model = create_model("clip_test", init_logit_scale=10.0)
    tx = optax.sgd(1e-3)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    state, _ = create_train_state(
        lambda rng: model.init(rng, batch["image"][:1], batch["tokens"][:1]),
        tx,
        mesh,
        seed=0,
    )
    step = jax.jit(make_train_step(model, tx, Contrastive("infonce"), optax.constant_schedule(0.0)))
    state, _ = step(state, batch)
    assert float(state.params["logit_scale"]) == pytest.approx(np.log(100.0))


def classification_step_on_mesh(mesh_shape, devices, images, labels):
    """One SGD step of the tiny ResNet: loss, gradients and updated BatchNorm statistics."""
    model = create_model("resnet_test")
    tx = optax.sgd(0.1)
    mesh = sharding.make_mesh(mesh_shape, devices)
    state, shardings = create_train_state(lambda rng: model.init(rng, images[:1]), tx, mesh, seed=0)
    batch_sharding = sharding.batch_sharding(mesh)
    batch = jax.device_put({"image": images, "label": labels}, batch_sharding)
    step = jax.jit(
        make_train_step(model, tx, Classification(), optax.constant_schedule(0.1)),
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, None),
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        new_state, metrics = step(state, batch)
    return jax.device_get((metrics["loss"], new_state.params, new_state.model_state))


def test_batch_norm_statistics_are_synchronised_across_devices(batch):
    """BatchNorm over a batch split 8 ways must see the global batch (SyncBatchNorm).

    Per-device statistics would normalise each 2-image shard by its own mean and variance,
    changing the loss, the update and the running averages well beyond round-off.
    """
    rng = np.random.default_rng(1)
    # Shards that differ in brightness, so per-device statistics would differ clearly.
    images = batch["image"] + np.repeat(np.arange(8, dtype=np.float32), 2)[:, None, None, None]
    labels = rng.integers(0, 10, size=BATCH).astype(np.int32)
    loss1, params1, stats1 = classification_step_on_mesh(
        {"data": 1}, jax.devices()[:1], images, labels
    )
    loss8, params8, stats8 = classification_step_on_mesh({"data": 8}, jax.devices(), images, labels)
    # Tolerance: float32 round-off of reductions summed in another order (~1e-6 reached).
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    chex.assert_trees_all_close(stats8, stats1, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(params8, params1, rtol=1e-5, atol=1e-5)
    # The statistics really moved: momentum 0.9 towards the batch's, from mean 0 / var 1.
    assert np.abs(stats1["batch_stats"]["bn1"]["mean"]).max() > 1e-2
