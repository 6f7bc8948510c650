"""CLIP's causal text Transformer (Radford et al. 2021, section 2.4).

Token and learned positional embeddings, pre-LN blocks under a causal mask,
`ln_final`, and the features of the end-of-text token. As in OpenAI's code the
EOT token is found as the argmax of the ids: both the OpenAI vocabulary and the
small trained BPE (`jaxmm.data.tokenizer`) give EOT the largest id. Padding
(id 0) after EOT is never attended to by EOT because of the causal mask.

Input: int token ids `[B, L]` with `L <= context_length`; output `[B, width]`, or with
`output_tokens=True` every position after `ln_final`, `[B, L, width]` (padding included:
mask it with `tokens != 0`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxmm.models.layers import Encoder, layer_norm

Dtype = Any


class TextTransformer(nn.Module):
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_dim: int = 2048
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    output_tokens: bool = False
    # Speed and memory knobs; none changes the numbers (see `jaxmm.models.layers.Encoder`).
    attention_impl: str | None = "auto"
    attention_pad_multiple: int = 0
    scan_layers: bool = False
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
        del train
        length = tokens.shape[-1]
        if length > self.context_length:
            raise ValueError(
                f"{length} tokens exceed the text tower's context of {self.context_length}"
            )
        token_embed = self.param(
            "token_embed",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
            (self.vocab_size, self.width),
            self.param_dtype,
        )
        pos_embed = self.param(
            "pos_embed",
            nn.with_logical_partitioning(nn.initializers.normal(0.01), ("length", "embed")),
            (self.context_length, self.width),
            self.param_dtype,
        )
        x = jnp.take(token_embed, tokens, axis=0) + pos_embed[:length]  # [B, L, D]
        x = nn.with_logical_constraint(x.astype(self.dtype), ("batch", "act_length", "act_embed"))
        x = Encoder(
            self.depth,
            self.num_heads,
            self.mlp_dim,
            self.activation,
            self.layer_norm_eps,
            is_causal=True,
            attention_impl=self.attention_impl,
            attention_pad_multiple=self.attention_pad_multiple,
            scan_layers=self.scan_layers,
            remat=self.remat,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="encoder",
        )(x)
        x = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "ln_final")(x)
        if self.output_tokens:
            return x
        eot_position = jnp.argmax(tokens, axis=-1)  # [B]
        return x[jnp.arange(x.shape[0]), eot_position]  # [B, D]


TEXT_VARIANTS: dict[str, dict[str, Any]] = {
    # CLIP paper's text tower for ViT-B models: 12 layers, 512 wide, 8 heads.
    "text_transformer": dict(width=512, depth=12, num_heads=8, mlp_dim=2048),
    "text_transformer_test": dict(
        vocab_size=512, context_length=16, width=32, depth=2, num_heads=2, mlp_dim=64
    ),
}
