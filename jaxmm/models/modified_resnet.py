"""ModifiedResNet: the image tower of OpenAI's CLIP ResNets (Radford et al. 2021, section 2.4).

Matches open_clip's `open_clip/modified_resnet.py` (`ModifiedResNet`, `Bottleneck`,
`AttentionPool2d`, open_clip 3.3.0, itself OpenAI's `clip/model.py`). Differences from
torchvision's ResNet (`jaxmm.models.resnet`):
- Stem: three 3x3 convs (stride 2 on the first; widths width/2, width/2, width), each with
  BatchNorm + ReLU, then a 2x2 average pool instead of the 3x3 max pool.
- Anti-aliased downsampling (Zhang 2019, "Making Convolutional Networks Shift-Invariant
  Again"): every conv has stride 1; a block with stride s average-pools s x s after its 3x3 conv,
  and its shortcut average-pools s x s *before* the 1x1 conv + BatchNorm.
- Attention pooling instead of global average pooling: the final map's mean is prepended as an
  extra token, a learned positional embedding of HW + 1 positions is added, and one
  multi-head attention query (from the mean token) attends over all HW + 1 tokens; `c_proj`
  projects the result to CLIP's embedding width, so CLIP applies no image projection of its own.
- BatchNorm as torch (`jaxmm.models.layers.BatchNorm`: unbiased running variance), eps 1e-5.

Input: NHWC float images `[B, image_size, image_size, 3]`: the positional embedding fixes the
size (image_size / 32 squared positions plus one). Output: the embedding `[B, output_dim]`, or
logits `[B, num_classes]` from a linear head on it when `num_classes > 0` (open_clip has no
head; it is there to fine-tune or probe the tower like any other jaxmm classifier).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import linen as nn

from jaxmm.models.layers import classifier_head, dot_product_attention
from jaxmm.models.resnet import ConvBnLayers

Dtype = Any


def _avg_pool(x: jax.Array, stride: int) -> jax.Array:
    """torch's `nn.AvgPool2d(stride)`: `[B, H, W, C]` -> `[B, H // s, W // s, C]` (floor)."""
    if stride == 1:
        return x
    return nn.avg_pool(x, (stride, stride), strides=(stride, stride), padding="VALID")


class Bottleneck(ConvBnLayers):
    """1x1 reduce, 3x3, [s x s avg pool], 1x1 expand: `[B, H, W, C]` -> `[B, H/s, W/s, 4F]`."""

    features: int = 64
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        out = 4 * self.features
        y = nn.relu(self.norm("bn1")(self.conv(self.features, 1, 1, "conv1")(x), train=train))
        y = nn.relu(self.norm("bn2")(self.conv(self.features, 3, 1, "conv2")(y), train=train))
        y = _avg_pool(y, self.stride)  # anti-aliased: pool, never a strided conv
        y = self.norm("bn3")(self.conv(out, 1, 1, "conv3")(y), train=train)
        if self.stride > 1 or x.shape[-1] != out:
            # open_clip's `downsample` Sequential: `-1` AvgPool2d, `0` 1x1 conv, `1` BN.
            x = self.conv(out, 1, 1, "downsample_conv")(_avg_pool(x, self.stride))
            x = self.norm("downsample_bn")(x, train=train)
        return nn.relu(y + x)


class AttentionPool2d(nn.Module):
    """`[B, H, W, C]` -> `[B, output_dim]`: one query (the map's mean) attends over the map.

    torch's `F.multi_head_attention_forward` computes all HW + 1 queries and open_clip keeps
    the first; only that one is computed here, which gives the same numbers.
    """

    num_heads: int
    output_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _dense(self, features: int, axes: tuple[str, str], name: str) -> nn.Dense:
        return nn.Dense(
            features,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
            name=name,
        )

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
        x = rearrange(x, "b h w c -> b (h w) c")
        x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)  # [B, HW + 1, C]
        pos_embed = self.param(
            "positional_embedding",
            # open_clip: randn / sqrt(C).
            nn.with_logical_partitioning(nn.initializers.normal(width**-0.5), ("length", "embed")),
            (x.shape[1], width),
            self.param_dtype,
        )
        x = x + pos_embed.astype(self.dtype)
        heads = lambda t: rearrange(t, "b l (h d) -> b l h d", h=self.num_heads)
        query = heads(self._dense(width, ("embed", "heads"), "q_proj")(x[:, :1]))  # [B, 1, H, Dh]
        key = heads(self._dense(width, ("embed", "heads"), "k_proj")(x))  # [B, HW + 1, H, Dh]
        value = heads(self._dense(width, ("embed", "heads"), "v_proj")(x))
        attended = dot_product_attention(query, key, value)  # [B, 1, H, Dh]
        attended = rearrange(attended, "b 1 h d -> b (h d)")  # [B, C]
        return self._dense(self.output_dim, ("heads", "embed"), "c_proj")(attended)


class ModifiedResNet(ConvBnLayers):
    """CLIP's ResNet image tower: `[B, S, S, 3]` -> embeddings `[B, output_dim]`.

    Attributes:
        stage_sizes: Bottleneck blocks per stage (open_clip's `layers`), four stages.
        width: channels of the stem's last conv and of the first stage (x2 per later stage);
            the final map has 32 * width channels.
        num_heads: attention-pool heads (open_clip: 32 * width / 64).
        output_dim: embedding width (`c_proj`'s output), CLIP's `embed_dim`.
        image_size: input side S; the positional embedding has (S / 32)^2 + 1 rows.
        num_classes: 0 returns the embedding; otherwise a linear `head` on it gives logits.
    """

    stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    num_heads: int = 32
    output_dim: int = 1024
    image_size: int = 224
    num_classes: int = 0

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"images are {images.shape[1]}x{images.shape[2]}, but the attention pool's "
                f"positional embedding is for {self.image_size}x{self.image_size}"
            )
        x = images.astype(self.dtype)
        stem = ((self.width // 2, 2), (self.width // 2, 1), (self.width, 1))
        for i, (features, stride) in enumerate(stem, start=1):
            x = self.conv(features, 3, stride, f"conv{i}")(x)
            x = nn.relu(self.norm(f"bn{i}")(x, train=train))
        x = _avg_pool(x, 2)  # [B, S/4, S/4, width]
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = Bottleneck(
                    features=self.width * 2**i,
                    stride=2 if i > 0 and j == 0 else 1,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f"layer{i + 1}_{j}",
                )(x, train=train)
            x = nn.with_logical_constraint(x, ("batch", None, None, "act_embed"))
        # [B, S/32, S/32, 32 width] -> [B, output_dim]
        x = AttentionPool2d(
            self.num_heads, self.output_dim, self.dtype, self.param_dtype, name="attnpool"
        )(x)
        if not self.num_classes:
            return x
        return classifier_head(self.num_classes, self.dtype, self.param_dtype, "head")(x)


# open_clip's `model_configs/RN50.json` and `RN101.json` (CLIP paper, Table 19): width 64,
# 32 heads (open_clip's `width * 32 // head_width`, head_width 64), 224 px.
MODIFIED_RESNET_VARIANTS: dict[str, dict[str, Any]] = {
    "modified_resnet50": dict(stage_sizes=(3, 4, 6, 3), output_dim=1024),
    "modified_resnet101": dict(stage_sizes=(3, 4, 23, 3), output_dim=512),
    # Tiny variant for tests: 32 px images end as a 1x1 map, so the pool sees 2 tokens.
    "modified_resnet_test": dict(
        stage_sizes=(1, 1, 1, 1),
        width=8,
        num_heads=4,
        output_dim=32,
        image_size=32,
        num_classes=10,
    ),
}
