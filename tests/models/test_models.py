"""Every tiny registry variant: init, apply, shapes, finiteness, jit vs no-jit, a gradient."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxmm.models import create_model, list_models
from jaxmm.models.layers import gelu_exact, quick_gelu
from jaxmm.models.swin import SwinBlock
from tests.models.tiny_inputs import tiny_inputs

TINY = [name for name in list_models() if name.endswith("_test")]


@pytest.mark.parametrize("name", TINY)
def test_tiny_variant_shapes_finite_and_jit(name):
    model = create_model(name)
    inputs = tiny_inputs(name)
    variables = nn.unbox(model.init(jax.random.PRNGKey(0), *inputs))
    apply = lambda v, *x: model.apply(v, *x)
    eager = apply(variables, *inputs)
    jitted = jax.jit(apply)(variables, *inputs)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-5, atol=1e-5)
    chex.assert_tree_all_finite(eager)
    if name.startswith("clip"):
        chex.assert_shape(eager.image_embeddings, (2, model.embed_dim))
        chex.assert_shape(eager.text_embeddings, (2, model.embed_dim))
        np.testing.assert_allclose(np.linalg.norm(eager.image_embeddings, axis=-1), 1, rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(eager.text_embeddings, axis=-1), 1, rtol=1e-5)
        np.testing.assert_allclose(eager.logit_scale, np.log(1 / 0.07), rtol=1e-6)
    elif name.startswith("text"):
        chex.assert_shape(eager, (2, model.width))
    elif name.startswith("captioner"):  # next-token logits at every position
        chex.assert_shape(eager, (*inputs[1].shape, model.decoder.vocab_size))
    else:
        chex.assert_shape(eager, (2, model.num_classes))


@pytest.mark.parametrize("name", TINY)
def test_tiny_variant_gradient_is_finite_and_nonzero(name):
    model = create_model(name)
    inputs = tiny_inputs(name)
    variables = nn.unbox(model.init(jax.random.PRNGKey(1), *inputs))
    params = variables["params"]

    def loss(p):
        # Other collections (BatchNorm statistics) ride along unchanged.
        out = model.apply({**variables, "params": p}, *inputs)
        leaves = jax.tree.leaves(out)
        return sum(jnp.sum(jnp.sin(x)) for x in leaves)

    grads = jax.grad(loss)(params)
    chex.assert_tree_all_finite(grads)
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)) > 0


def test_text_tower_pools_at_eot_and_ignores_later_tokens():
    model = create_model("text_transformer_test")
    tokens = np.array([[5, 6, 7, 511, 0, 0, 0, 0]], np.int32)
    variables = model.init(jax.random.PRNGKey(0), tokens)
    base = model.apply(variables, tokens)
    # Padding after EOT cannot influence EOT's features under the causal mask.
    changed = tokens.copy()
    changed[0, 5] = 9
    chex.assert_trees_all_close(model.apply(variables, changed), base, atol=1e-6)
    # A token before EOT does.
    changed = tokens.copy()
    changed[0, 1] = 9
    assert not np.allclose(model.apply(variables, changed), base, atol=1e-4)


def test_unknown_model_and_override_errors_name_the_culprit():
    with pytest.raises(KeyError, match="vit_huge"):
        create_model("vit_huge")
    with pytest.raises(TypeError, match="patch_sise"):
        create_model("vit_test", patch_sise=4)


def test_image_size_not_divisible_by_patch_is_a_clear_error():
    model = create_model("vit_test")  # patch 8
    with pytest.raises(ValueError, match="not divisible by patch size 8"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 30, 30, 3)))


def test_activations_match_their_definitions():
    x = np.linspace(-4, 4, 17, dtype=np.float32)
    from scipy.special import erf  # exact GELU: x * Phi(x)

    np.testing.assert_allclose(gelu_exact(x), 0.5 * x * (1 + erf(x / np.sqrt(2))), atol=1e-6)
    np.testing.assert_allclose(quick_gelu(x), x / (1 + np.exp(-1.702 * x)), atol=1e-6)


def test_conv_stem_downsamples_by_the_patch_size():
    model = create_model("vit_test", stem="conv", num_classes=0)  # patch 8: three stride-2 convs
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)))
    params = variables["params"]
    assert [k for k in params if k.startswith("stem_conv")] == [
        "stem_conv0",
        "stem_conv1",
        "stem_conv2",
    ]
    assert nn.unbox(params["pos_embed"]).shape == (1, 1 + 16, 32)  # class token + 4x4 patches
    chex.assert_shape(model.apply(variables, jnp.ones((2, 32, 32, 3))), (2, 32))
    with pytest.raises(ValueError, match="power-of-two patch size"):
        create_model("vit_test", stem="conv", patch_size=6).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 36, 36, 3))
        )


def test_swin_stochastic_depth_drops_whole_samples_in_train_mode_only():
    block = SwinBlock(num_heads=2, window_size=4, shifted=True, drop_path=0.5)
    x = jnp.broadcast_to(jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 16)), (16, 8, 8, 16))
    # Random weights without `init`: eager init compiles a random draw per parameter shape.
    shapes = nn.unbox(jax.eval_shape(lambda: block.init(jax.random.PRNGKey(1), x, train=False)))
    rng = np.random.default_rng(1)
    variables = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), shapes)
    evaluated = block.apply(variables, x, train=False)  # deterministic: no rng needed
    chex.assert_trees_all_close(evaluated, jnp.broadcast_to(evaluated[:1], x.shape))
    trained = block.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    # Identical samples: those with both residual branches dropped come out exactly as x,
    # which per-element dropout would never give.
    untouched = np.asarray(jnp.all(trained == x, axis=(1, 2, 3)))
    assert 0 < untouched.sum() < len(untouched), untouched


VISION_TINY = [
    name for name in TINY if not name.startswith(("clip", "text", "fusion", "captioner"))
]


@pytest.mark.parametrize("tower", VISION_TINY)
def test_every_tiny_image_model_serves_as_clip_image_tower(tower):
    """Features before the head feed CLIP's projection (shapes traced, no compute)."""
    model = create_model("clip_test", image_tower=tower)
    images, tokens = tiny_inputs(tower)[0], tiny_inputs("clip_test")[1]
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images, tokens)
    output = jax.eval_shape(model.apply, variables, images, tokens)
    chex.assert_shape(output.image_embeddings, (2, model.embed_dim))
    headless = create_model(tower, num_classes=0)
    features = jax.eval_shape(headless.init_with_output, jax.random.PRNGKey(0), images)[0]
    kernel = nn.unbox(variables["params"])["image_projection"]["kernel"]
    assert kernel.shape[0] == features.shape[-1]  # the projection reads the tower's features
