"""The shared attention core against a hand-written softmax(QK^T / sqrt(d) + bias)V."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.models.layers import dot_product_attention

B, T, S, H, D = 2, 5, 7, 3, 8


def reference(query, key, value, bias=None, mask=None, causal=False):
    """float64 numpy attention, written out: `[B, T, H, D]` queries over `[B, S, H, D]`."""
    q, k, v = (np.asarray(x, np.float64) for x in (query, key, value))
    logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    allowed = np.ones(logits.shape, bool)
    if mask is not None:
        allowed &= np.broadcast_to(np.asarray(mask), logits.shape)
    if causal:
        allowed &= np.tril(np.ones(logits.shape[-2:], bool))
    logits = np.where(allowed, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", weights, v)


@pytest.fixture(scope="module")
def qkv():
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    query = jax.random.normal(keys[0], (B, T, H, D))
    key = jax.random.normal(keys[1], (B, S, H, D))
    value = jax.random.normal(keys[2], (B, S, H, D))
    bias = jax.random.normal(keys[3], (1, H, T, S))
    mask = np.random.default_rng(0).random((B, 1, T, S)) > 0.3
    mask[..., 0] = True  # every query keeps one key
    return query, key, value, bias, mask


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("pad_multiple", [0, 4])
def test_matches_reference(qkv, pad_multiple, masked):
    """Padding (7 keys to 8) must hide the padded keys by itself, mask or not."""
    query, key, value, bias, mask = qkv
    mask = mask if masked else None
    got = dot_product_attention(query, key, value, bias=bias, mask=mask, pad_multiple=pad_multiple)
    chex.assert_shape(got, (B, T, H, D))
    np.testing.assert_allclose(got, reference(query, key, value, bias, mask), atol=2e-6)


def test_causal_matches_reference(qkv):
    query, key, _, _, _ = qkv
    value = key  # causal attention needs T == S
    query = query[:, :T]
    key, value = key[:, :T], value[:, :T]
    got = dot_product_attention(query, key, value, is_causal=True, pad_multiple=4)
    np.testing.assert_allclose(got, reference(query, key, value, causal=True), atol=2e-6)


def test_extra_batch_axes_broadcast_a_per_window_bias(qkv):
    """Swin's layout: `[images, windows, N, H, D]` with a `[windows, H, N, N]` bias."""
    query, key, value, _, _ = qkv
    windows = 3
    q = jnp.stack([query] * windows, axis=1)[:, :, :, :, :]  # [B, W, T, H, D]
    k = jnp.stack([key[:, :T]] * windows, axis=1)
    v = jnp.stack([value[:, :T]] * windows, axis=1)
    bias = jax.random.normal(jax.random.PRNGKey(5), (windows, H, T, T))
    got = dot_product_attention(q, k, v, bias=bias)
    for w in range(windows):
        expected = reference(q[:, w], k[:, w], v[:, w], bias[w][None])
        np.testing.assert_allclose(got[:, w], expected, atol=2e-6)


def test_padding_changes_neither_output_nor_gradient(qkv):
    query, key, value, bias, mask = qkv

    def loss(q, pad_multiple):
        out = dot_product_attention(q, key, value, bias=bias, mask=mask, pad_multiple=pad_multiple)
        return jnp.sum(out**2)

    plain, padded = jax.grad(loss)(query, 0), jax.grad(loss)(query, 8)
    chex.assert_trees_all_close(plain, padded, atol=1e-5)


def test_bfloat16_inputs_give_bfloat16(qkv):
    query, key, value, _, _ = qkv
    got = dot_product_attention(*(x.astype(jnp.bfloat16) for x in (query, key, value)))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        got.astype(np.float32), reference(query, key, value), atol=5e-2, rtol=5e-2
    )


def test_unknown_implementation_is_named(qkv):
    query, key, value, _, _ = qkv
    with pytest.raises(ValueError, match="'flash'"):
        dot_product_attention(query, key, value, implementation="flash")


def test_auto_takes_cudnn_only_where_it_was_measured_to_run(qkv, monkeypatch):
    """The choice of "auto", with the device faked: an NVIDIA GPU in bf16 without bias or mask
    gets cuDNN; any other case (this CPU, float32, a bias, a mask) stays on XLA."""
    from jaxmm.models import layers

    query = qkv[0]
    bf16 = query.astype(jnp.bfloat16)
    assert not layers._cudnn_suits(bf16, None, None)  # this machine's CPU

    class FakeGpu:
        platform, device_kind = "gpu", "NVIDIA H200"

    monkeypatch.setattr(jax, "devices", lambda *a: [FakeGpu()])
    assert layers._cudnn_suits(bf16, None, None)
    assert not layers._cudnn_suits(query, None, None)  # float32
    assert not layers._cudnn_suits(bf16, qkv[3], None)  # Swin's bias
    assert not layers._cudnn_suits(bf16, None, qkv[4])
    assert not layers._cudnn_suits(bf16[..., :6], None, None)  # head dim 6
