"""The captioner: registry variants, the image tower's CLIP layout, and the cached decoder
against teacher forcing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from configs import clip_small
from jaxmm.models import create_model, list_models
from jaxmm.train.task_common import model_overrides

IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)


def _tokens(length: int, vocab: int, seed: int = 1) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).integers(1, vocab, (2, length)), jnp.int32)


def _shapes(tree) -> dict:
    flat = traverse_util.flatten_dict(nn.unbox(dict(tree)))
    return {path: leaf.shape for path, leaf in flat.items()}


@pytest.mark.parametrize("tie", [True, False])
def test_logits_shape_and_gradient(tie):
    model = create_model("captioner_test", decoder=dict(tie_embeddings=tie))
    tokens = _tokens(16, 600)
    variables = nn.unbox(model.init(jax.random.PRNGKey(0), IMAGES, tokens))
    assert set(variables["params"]) == {"image_tower", "image_projection", "decoder"}
    assert ("head" in variables["params"]["decoder"]) is not tie
    logits = model.apply(variables, IMAGES, tokens)
    assert logits.shape == (2, 16, 600) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()

    def loss(params):
        out = model.apply({"params": params}, IMAGES, tokens)
        return -jax.nn.log_softmax(out)[..., 1].mean()

    grads = jax.grad(loss)(variables["params"])
    norms = {
        k: float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(v)))) for k, v in grads.items()
    }
    assert all(n > 0 for n in norms.values()), (
        norms
    )  # the image tower learns through the cross-attention


def test_variants_are_registered():
    assert {"captioner_test", "captioner_small", "captioner_clip_vit_b32"} <= set(list_models())


def test_small_image_tower_has_the_clip_small_tree():
    """A clip_small run's `image_tower` subtree fits captioner_small's exactly."""
    clip_config = clip_small.get_config()
    name, overrides = model_overrides(clip_config.model)
    clip = create_model(name, **overrides)
    captioner = create_model("captioner_small")
    tokens = jnp.zeros((1, 32), jnp.int32)
    clip_shapes = _shapes(jax.eval_shape(clip.init, jax.random.PRNGKey(0), IMAGES[:1], tokens))
    cap_shapes = _shapes(jax.eval_shape(captioner.init, jax.random.PRNGKey(0), IMAGES[:1], tokens))
    tower = lambda shapes: {p: s for p, s in shapes.items() if p[1] == "image_tower"}  # noqa: E731
    assert tower(clip_shapes) and tower(clip_shapes) == tower(cap_shapes)


def test_b32_image_tower_has_openai_clip_tree():
    clip, captioner = create_model("clip_vit_b32"), create_model("captioner_clip_vit_b32")
    images, tokens = jnp.zeros((1, 224, 224, 3)), jnp.zeros((1, 77), jnp.int32)
    clip_shapes = _shapes(jax.eval_shape(clip.init, jax.random.PRNGKey(0), images, tokens))
    cap_shapes = _shapes(jax.eval_shape(captioner.init, jax.random.PRNGKey(0), images, tokens))
    tower = lambda shapes: {p: s for p, s in shapes.items() if p[1] == "image_tower"}  # noqa: E731
    assert tower(clip_shapes) == tower(cap_shapes)


def _decode_all(model, variables, tokens, context, chunks):
    """Logits of `tokens` fed through the cache in pieces of the given sizes."""
    tokens_full = jnp.zeros((tokens.shape[0], model.decoder.max_length), jnp.int32)
    _, created = model.apply(variables, tokens_full, context, method="decode", mutable=["cache"])
    cache = jax.tree.map(jnp.zeros_like, created["cache"])
    outputs, start = [], 0
    for size in chunks:
        piece = tokens[:, start : start + size]
        logits, updated = model.apply(
            {**variables, "cache": cache},
            piece,
            context if start == 0 else None,
            method="decode",
            mutable=["cache"],
        )
        cache, start = updated["cache"], start + size
        outputs.append(logits)
    return jnp.concatenate(outputs, axis=1)


@pytest.mark.parametrize("chunks", [[1] * 16, [5, 1, 1, 4, 5]], ids=["one_by_one", "prefixes"])
def test_cached_decoding_equals_teacher_forcing(chunks):
    """Every step's logits through the key/value cache equal the uncached forward pass's at
    that position: float32, tolerance 1e-5 absolute (logits of magnitude ~1)."""
    model = create_model("captioner_test", decoder=dict(depth=2))
    tokens = _tokens(16, 600)
    variables = nn.unbox(model.init(jax.random.PRNGKey(0), IMAGES, tokens))
    # Larger weights than the init's, so that every position's logits differ clearly.
    variables = jax.tree.map(lambda x: 4 * x, variables)
    full = model.apply(variables, IMAGES, tokens)
    context = model.apply(variables, IMAGES, method="encode")
    cached = _decode_all(model, variables, tokens, context, chunks)
    assert float(jnp.abs(full).max()) > 0.5
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), atol=1e-5)


def test_context_is_read_from_the_cache_after_the_first_step():
    model = create_model("captioner_test")
    tokens = _tokens(16, 600)
    variables = nn.unbox(model.init(jax.random.PRNGKey(0), IMAGES, tokens))
    other = model.apply(variables, IMAGES[::-1], method="encode")
    # The second image's cached keys/values answer the later steps, whatever the caller holds.
    swapped = _decode_all(model, variables, tokens, other, [1, 15])
    full_other = model.apply(variables, IMAGES[::-1], tokens)
    np.testing.assert_allclose(np.asarray(swapped), np.asarray(full_other), atol=1e-5)
    assert not np.allclose(np.asarray(swapped), np.asarray(model.apply(variables, IMAGES, tokens)))
    with pytest.raises(ValueError, match="context=None"):
        model.apply(variables, tokens[:, :1], None, method="decode", mutable=["cache"])


def test_too_long_and_non_token_towers_are_refused():
    model = create_model("captioner_test")
    with pytest.raises(ValueError, match="exceed the decoder's max_length 16"):
        model.init(jax.random.PRNGKey(0), IMAGES, jnp.zeros((2, 17), jnp.int32))
    with pytest.raises(TypeError, match="output_tokens"):
        create_model("captioner_test", image_tower="mobilenet_v2")
