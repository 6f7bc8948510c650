"""Image captioning: an image tower's tokens read by a causal Transformer decoder.

The encoder-decoder captioner of "Show, Attend and Tell" (Xu et al. 2015) in its Transformer
form (Vaswani et al. 2017; the captioning decoders of CoCa, Yu et al. 2022, and GIT, Wang et
al. 2022, are the same shape): any registered image tower, built with `num_classes=0,
output_tokens=True`, gives `[B, N, Dv]` tokens; a dense layer projects them to the decoder
width; the decoder embeds the caption tokens (learned token and position embeddings), runs
pre-LN blocks of causal self-attention, cross-attention to the image tokens and an MLP
(`jaxmm.models.layers.CrossAttentionBlock`), a final LayerNorm, and maps back to the
vocabulary with the transposed token embedding (tied weights, as GPT-2 and CoCa's decoder
do; `tie_embeddings=False` gives a separate `head`).

Three entry points:
- `__call__(images, tokens)`: teacher forcing, logits `[B, L, V]` for training;
- `encode(images)`: the projected image tokens `[B, N, D]`, computed once per image;
- `decode(tokens, context)`: autoregressive steps on a fixed-size key/value cache (the
  Flax `cache` collection). The call that creates the cache (`init`, or `apply` with
  `mutable=['cache']` on variables without one) sizes it by its `[B, max_length]` tokens;
  then each call feeds the next `T` tokens at the cache's position. The first passes the
  image context, whose cross-attention keys/values every layer stores; later calls pass
  `context=None` and read them. `jaxmm.generate` drives it.

The image tower's subtree is named `image_tower` and has CLIP's layout, so a CLIP run's (or
OpenAI's) image tower initialises it (`pretrained_subtrees` in `jaxmm.train.pretrained`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxmm.models.clip import CLIP_VIT_STYLE
from jaxmm.models.layers import CrossAttentionBlock, layer_norm

Dtype = Any


class CaptionDecoder(nn.Module):
    """Causal Transformer decoder over caption tokens `[B, T]` reading a context `[B, N, D]`.

    Returns float32 logits `[B, T, vocab_size]`. With `decode=True` it runs on the caches of
    its attention layers and keeps its own position in the `cache` collection.
    """

    vocab_size: int = 49408
    max_length: int = 77
    width: int = 512
    depth: int = 6
    num_heads: int = 8
    mlp_dim: int = 2048
    activation: str = "gelu"
    layer_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    attention_impl: str | None = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _positions(self, pos_embed: jax.Array, length: int, decode: bool) -> jax.Array:
        """`[T, D]` position embeddings of this call's tokens."""
        if not decode:
            return pos_embed[:length]
        initialised = self.has_variable("cache", "position")
        position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
        if not initialised:  # the call that sizes the cache sees the whole sequence
            return pos_embed[:length]
        start = position.value
        position.value = start + length
        return jax.lax.dynamic_slice_in_dim(pos_embed, start, length)

    @nn.compact
    def __call__(
        self, tokens: jax.Array, context: jax.Array | None, *, decode: bool = False
    ) -> jax.Array:
        length = tokens.shape[-1]
        if length > self.max_length:
            raise ValueError(f"{length} tokens exceed the decoder's max_length {self.max_length}")
        token_embed = self.param(
            "token_embed",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
            (self.vocab_size, self.width),
            self.param_dtype,
        )
        pos_embed = self.param(
            "pos_embed",
            nn.with_logical_partitioning(nn.initializers.normal(0.01), ("length", "embed")),
            (self.max_length, self.width),
            self.param_dtype,
        )
        x = jnp.take(token_embed, tokens, axis=0) + self._positions(pos_embed, length, decode)
        x = nn.with_logical_constraint(x.astype(self.dtype), ("batch", "act_length", "act_embed"))
        for index in range(self.depth):
            x = CrossAttentionBlock(
                self.num_heads,
                self.mlp_dim,
                self.activation,
                self.layer_norm_eps,
                is_causal=True,
                attention_impl=self.attention_impl,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"block_{index}",
            )(x, context, decode=decode)
        x = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "ln_final")(x)
        if self.tie_embeddings:
            logits = jnp.einsum("btd,vd->btv", x, token_embed.astype(self.dtype))  # [B, T, V]
        else:
            logits = nn.Dense(
                self.vocab_size,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                # Not zeros, as ViT's head: a zero head would stop every gradient below it.
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.normal(0.02), ("embed", "vocab")
                ),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                name="head",
            )(x)
        return logits.astype(jnp.float32)


class Captioner(nn.Module):
    """An image tower returning tokens (`output_tokens=True`) and a `CaptionDecoder`.

    Input: NHWC float images `[B, H, W, 3]` and int token ids `[B, L]` (SOT first); output:
    logits `[B, L, V]` of the next token at every position.
    """

    image_tower: nn.Module
    decoder: CaptionDecoder
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.image_projection = nn.Dense(
            self.decoder.width,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None, "embed")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        )

    def encode(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """`[B, H, W, 3]` -> the decoder's context `[B, N, D]` (image tokens, projected)."""
        tokens = self.image_tower(images, train=train)
        if tokens.ndim != 3:
            raise ValueError(
                f"the image tower returned shape {tokens.shape}, not tokens [B, N, D]: build it "
                "with num_classes=0, output_tokens=True"
            )
        return self.image_projection(tokens)

    def decode(self, tokens: jax.Array, context: jax.Array | None = None) -> jax.Array:
        """One generation step: the next `T` tokens `[B, T]` -> logits `[B, T, V]`, on the
        cache (`apply(..., mutable=['cache'])`); `context` from `encode` on the first call."""
        return self.decoder(tokens, context, decode=True)

    def __call__(self, images: jax.Array, tokens: jax.Array, *, train: bool = False) -> jax.Array:
        return self.decoder(tokens, self.encode(images, train=train))


# Image tower (registry name, overrides) and decoder fields. The small decoders are sized for
# the built-in `clip_shapes` captions; the B/32 one has half the depth of CLIP's text tower,
# as CoCa's captioning decoder has half its model's text layers.
CAPTIONER_VARIANTS: dict[str, dict[str, Any]] = {
    "captioner_test": dict(
        image_tower="vit_test",
        image=CLIP_VIT_STYLE,
        decoder=dict(vocab_size=600, max_length=16, width=32, depth=1, num_heads=2, mlp_dim=64),
    ),
    # The image tower of configs/clip_small.py, so a run of it can initialise this one.
    "captioner_small": dict(
        image_tower="vit_test",
        image=dict(
            CLIP_VIT_STYLE,
            patch_size=8,
            width=128,
            depth=4,
            num_heads=4,
            mlp_dim=256,
            pool="gap",
            stem="conv",
        ),
        decoder=dict(vocab_size=1024, max_length=32, width=128, depth=2, num_heads=4, mlp_dim=256),
    ),
    # OpenAI's CLIP ViT-B/32 image tower (`init_from=clip_vit_b32@openai`).
    "captioner_clip_vit_b32": dict(
        image_tower="vit_b32",
        image=CLIP_VIT_STYLE,
        decoder=dict(
            vocab_size=49408, max_length=77, width=512, depth=6, num_heads=8, mlp_dim=2048
        ),
    ),
}
