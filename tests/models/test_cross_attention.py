"""Cross-attention against PyTorch's `nn.MultiheadAttention`, and the towers' token outputs
against their own pooled features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxmm.models import create_model
from jaxmm.models.layers import CrossAttention, CrossAttentionBlock

B, T, S, D, DC, H = 2, 5, 7, 16, 24, 4


def _inputs():
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    queries = jax.random.normal(keys[0], (B, T, D))
    context = jax.random.normal(keys[1], (B, S, DC))
    context_mask = np.ones((B, S), bool)
    context_mask[1, 4:] = False  # the second example's context is padded after 4 tokens
    return queries, context, context_mask


def test_cross_attention_matches_torch_multihead_attention():
    """Same weights in torch's MultiheadAttention (kdim = vdim = context width); tolerance
    1e-5 absolute in float32. The padding mask is torch's `key_padding_mask` (True = hide)."""
    torch = pytest.importorskip("torch")
    queries, context, context_mask = _inputs()
    module = CrossAttention(H)
    params = nn.unbox(module.init(jax.random.PRNGKey(1), queries, context))["params"]
    # Non-zero biases, so a bias dropped or misplaced shows.
    params = jax.tree.map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params
    )
    got = module.apply({"params": params}, queries, context, context_mask)

    reference = torch.nn.MultiheadAttention(D, H, kdim=DC, vdim=DC, batch_first=True)
    p = jax.tree.map(np.asarray, params)
    kv = p["kv"]["kernel"]  # [DC, 2, H, Dh]
    with torch.no_grad():
        # torch keeps [out, in] matrices and one bias vector for q, k and v together.
        reference.q_proj_weight.copy_(torch.tensor(p["query"]["kernel"].reshape(D, D).T))
        reference.k_proj_weight.copy_(torch.tensor(kv[:, 0].reshape(DC, D).T))
        reference.v_proj_weight.copy_(torch.tensor(kv[:, 1].reshape(DC, D).T))
        reference.in_proj_bias.copy_(
            torch.tensor(
                np.concatenate(
                    [p["query"]["bias"].reshape(-1), p["kv"]["bias"][0].reshape(-1)]
                    + [p["kv"]["bias"][1].reshape(-1)]
                )
            )
        )
        reference.out_proj.weight.copy_(torch.tensor(p["out"]["kernel"].reshape(D, D).T))
        reference.out_proj.bias.copy_(torch.tensor(p["out"]["bias"]))
        want, _ = reference(
            torch.tensor(np.asarray(queries)),
            torch.tensor(np.asarray(context)),
            torch.tensor(np.asarray(context)),
            key_padding_mask=torch.tensor(~context_mask),
        )
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-5)


def test_masked_context_is_never_read():
    queries, context, context_mask = _inputs()
    block = CrossAttentionBlock(H, 32)
    variables = nn.unbox(block.init(jax.random.PRNGKey(1), queries, context))
    before = block.apply(variables, queries, context, context_mask=context_mask)
    changed = context.at[1, 4:].set(1e3)
    after = block.apply(variables, queries, changed, context_mask=context_mask)
    np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    # ...and a visible position does change it, so the check above can fail.
    moved = block.apply(variables, queries, context.at[1, 0].set(1e3), context_mask=context_mask)
    assert not np.allclose(np.asarray(before[1]), np.asarray(moved[1]))


IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)


@pytest.mark.parametrize(
    "name, overrides, pool",
    [
        ("vit_test", {"pool": "cls"}, lambda tokens: tokens[:, 0]),
        ("resnet_test", {}, lambda tokens: tokens.mean(axis=1)),
        ("swin_test", {}, lambda tokens: tokens.mean(axis=1)),
    ],
)
def test_image_tokens_pool_to_the_pooled_features(name, overrides, pool):
    """Same parameters: pooling the token output gives exactly the pooled output."""
    pooled_model = create_model(name, num_classes=0, **overrides)
    variables = pooled_model.init(jax.random.PRNGKey(0), IMAGES)
    token_model = create_model(name, num_classes=0, output_tokens=True, **overrides)
    tokens = token_model.apply(variables, IMAGES)
    assert tokens.ndim == 3 and tokens.shape[0] == 2
    np.testing.assert_allclose(
        pool(tokens), pooled_model.apply(variables, IMAGES), rtol=1e-5, atol=1e-5
    )


def test_text_tokens_hold_the_pooled_eot_features():
    tokens = jnp.asarray([[3, 7, 9, 511, 0, 0], [3, 4, 511, 0, 0, 0]], jnp.int32)
    pooled_model = create_model("text_transformer_test")
    variables = pooled_model.init(jax.random.PRNGKey(0), tokens)
    sequence = create_model("text_transformer_test", output_tokens=True).apply(variables, tokens)
    assert sequence.shape == (2, 6, 32)
    np.testing.assert_allclose(
        sequence[jnp.arange(2), jnp.argmax(tokens, -1)],
        pooled_model.apply(variables, tokens),
        rtol=1e-6,
    )


def test_tokens_with_a_classifier_are_refused():
    with pytest.raises(ValueError, match="num_classes=0"):
        create_model("vit_test", output_tokens=True).init(jax.random.PRNGKey(0), IMAGES)
