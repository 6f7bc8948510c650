"""Stochastic depth in the ViT encoder: timm's per-block schedule, off at evaluation, and the
per-example drop statistics of `DropPath` (timm's `drop_path`: zero with probability r, else
scale by 1 / (1 - r))."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxmm.models import create_model
from jaxmm.models.layers import DropPath, drop_path_rates


def test_schedule_is_timms():
    timm = pytest.importorskip("timm")
    model = timm.models.VisionTransformer(
        img_size=32, patch_size=16, embed_dim=16, depth=5, num_heads=2, drop_path_rate=0.1
    )
    theirs = [
        getattr(block.drop_path1, "drop_prob", 0.0) for block in model.blocks
    ]  # block 0 holds an Identity
    np.testing.assert_allclose(drop_path_rates(0.1, len(model.blocks)), theirs, atol=1e-7)
    assert drop_path_rates(0.3, 1) == [0.0]


@pytest.mark.parametrize("scan_layers", [False, True])
def test_evaluation_ignores_the_rate_and_training_draws(scan_layers):
    images = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3))
    # Features, not logits: the head starts at zero and would hide every difference.
    plain = create_model("vit_test", num_classes=0, scan_layers=scan_layers)
    dropped = create_model("vit_test", num_classes=0, scan_layers=scan_layers, drop_path_rate=0.5)
    # The rate adds no parameters: one set of weights serves both.
    variables = nn.unbox(jax.jit(plain.init)(jax.random.PRNGKey(1), images))
    expected = plain.apply(variables, images)
    np.testing.assert_array_equal(dropped.apply(variables, images), expected)
    np.testing.assert_array_equal(plain.apply(variables, images, train=True), expected)
    train = jax.jit(lambda key: dropped.apply(variables, images, train=True, rngs={"dropout": key}))
    first, second = train(jax.random.PRNGKey(0)), train(jax.random.PRNGKey(1))
    assert np.isfinite(first).all()
    assert not np.allclose(first, expected) and not np.allclose(first, second)


def test_drop_path_zeroes_whole_examples_and_rescales_the_rest():
    x = jnp.ones((4000, 3, 5))
    out = DropPath().apply({}, x, 0.25, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    per_example = np.asarray(out).reshape(4000, -1)
    np.testing.assert_allclose(np.unique(per_example), [0.0, 1 / 0.75], rtol=1e-6)
    assert (per_example.min(axis=1) == per_example.max(axis=1)).all()  # one draw per example
    assert abs(np.mean(per_example[:, 0] == 0) - 0.25) < 0.021  # 3 binomial std devs
