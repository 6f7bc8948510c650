"""CLIP: contrastive language-image pretraining (Radford et al. 2021).

`CLIP` pairs any image tower from the registry (called with `num_classes=0`, so it
returns pooled features) with the causal text Transformer, projects both into a
shared embedding space without bias (as OpenAI does) and L2-normalises them. It
also owns the learnable temperature `logit_scale` (log of the inverse
temperature, initialised to ln(1/0.07); the train step clamps it to [0, ln 100]
after each update) and, for SigLIP's sigmoid loss, an optional `logit_bias`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

Dtype = Any


@struct.dataclass
class CLIPOutput:
    image_embeddings: jax.Array  # [B, E], unit norm
    text_embeddings: jax.Array  # [B, E], unit norm
    logit_scale: jax.Array  # [] (log of the inverse temperature)
    logit_bias: jax.Array | None = None  # [] (SigLIP only)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Unit vectors along the last axis, in float32 whatever the compute dtype."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


class CLIP(nn.Module):
    image_tower: nn.Module
    text_tower: nn.Module
    embed_dim: int = 512
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None
    # False for towers that already end in the embedding (ModifiedResNet's attention pool).
    project_image: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        def projection(name: str) -> nn.Dense:
            return nn.Dense(
                self.embed_dim,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.lecun_normal(), ("embed", None)
                ),
                name=name,
            )

        if self.project_image:
            self.image_projection = projection("image_projection")
        self.text_projection = projection("text_projection")
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(self.init_logit_scale), (), jnp.float32
        )
        if self.init_logit_bias is not None:
            self.logit_bias = self.param(
                "logit_bias", nn.initializers.constant(self.init_logit_bias), (), jnp.float32
            )

    def encode_image(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """`[B, H, W, 3]` normalised images -> `[B, E]` unit embeddings."""
        features = self.image_tower(images, train=train)
        return l2_normalize(self.image_projection(features) if self.project_image else features)

    def encode_text(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
        """`[B, L]` token ids -> `[B, E]` unit embeddings."""
        return l2_normalize(self.text_projection(self.text_tower(tokens, train=train)))

    def __call__(self, images: jax.Array, tokens: jax.Array, *, train: bool = False) -> CLIPOutput:
        return CLIPOutput(
            image_embeddings=self.encode_image(images, train=train),
            text_embeddings=self.encode_text(tokens, train=train),
            logit_scale=self.logit_scale,
            logit_bias=self.logit_bias if self.init_logit_bias is not None else None,
        )


# OpenAI's ViT image towers differ from timm's in these fields.
CLIP_VIT_STYLE: dict[str, Any] = dict(
    patch_bias=False, pre_norm=True, activation="quick_gelu", layer_norm_eps=1e-5
)

# Image tower (registry name, overrides), text tower (registry name, overrides),
# embedding width: Table 20 of the CLIP paper.
CLIP_VARIANTS: dict[str, dict[str, Any]] = {
    "clip_vit_b32": dict(
        image_tower="vit_b32", image=CLIP_VIT_STYLE, text_tower="text_transformer", embed_dim=512
    ),
    "clip_vit_b16": dict(
        image_tower="vit_b16", image=CLIP_VIT_STYLE, text_tower="text_transformer", embed_dim=512
    ),
    "clip_vit_l14": dict(
        image_tower="vit_l14",
        image=CLIP_VIT_STYLE,
        text_tower="text_transformer",
        text=dict(width=768, num_heads=12, mlp_dim=3072),
        embed_dim=768,
    ),
    # Any registry image model can be the tower (its `num_classes=0` features are projected);
    # this one pairs torchvision's ResNet-50, BatchNorm and all, with CLIP's text tower at the
    # width of OpenAI's RN50 (not OpenAI's ModifiedResNet, which is `clip_rn50`'s job).
    "clip_resnet50": dict(image_tower="resnet50", text_tower="text_transformer", embed_dim=1024),
    # OpenAI's ResNet CLIPs (open_clip's RN50.json / RN101.json): the attention pool's c_proj
    # already maps to embed_dim, so the image side has no separate projection.
    "clip_rn50": dict(
        image_tower="modified_resnet50",
        text_tower="text_transformer",
        embed_dim=1024,
        project_image=False,
    ),
    "clip_rn101": dict(
        image_tower="modified_resnet101",
        text_tower="text_transformer",
        embed_dim=512,
        project_image=False,
    ),
    "clip_rn_test": dict(
        image_tower="modified_resnet_test",
        text_tower="text_transformer_test",
        embed_dim=32,
        project_image=False,
    ),
    "clip_test": dict(
        image_tower="vit_test",
        image=CLIP_VIT_STYLE,
        text_tower="text_transformer_test",
        embed_dim=32,
    ),
}
