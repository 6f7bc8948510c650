"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

One module covers the two layouts people load weights from:
- timm's `VisionTransformer`: patch conv with bias, class token, learned positional
  embedding, LayerNorm eps 1e-6, exact GELU, final norm, linear head.
- OpenAI CLIP's `VisionTransformer`: patch conv without bias, `ln_pre` after the
  positional embedding, QuickGELU, LayerNorm eps 1e-5, `ln_post` on the class token.
Pooling is the class token (`pool='cls'`) or the mean of the patch tokens
(`pool='gap'`, timm's `global_pool='avg'`, no class token). `stem='conv'`
replaces the patchify convolution with the convolutional stem of Xiao et al.
2021 ("Early Convolutions Help Transformers See Better"): log2(patch_size)
3x3 stride-2 convolutions, then a 1x1 one; it learns shapes from few examples
much faster (see BENCHMARKS.md). With
`num_classes=0` the module returns the pooled, normalised features, which is
how CLIP uses it as an image tower; `output_tokens=True` (with `num_classes=0`)
returns every token after the final norm instead, `[B, N, D]` (the class token first
with `pool='cls'`), for models that attend to the image (fusion, captioning).

Input: NHWC float images `[B, H, W, 3]`, H and W divisible by `patch_size`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import linen as nn

from jaxmm.models.layers import ACTIVATIONS, Encoder, classifier_head, layer_norm

Dtype = Any


class VisionTransformer(nn.Module):
    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    num_classes: int = 1000
    pool: str = "cls"
    stem: str = "patch"
    patch_bias: bool = True
    pre_norm: bool = False
    activation: str = "gelu"
    layer_norm_eps: float = 1e-6
    output_tokens: bool = False
    # Speed and memory knobs; none changes the numbers (see `jaxmm.models.layers.Encoder`).
    attention_impl: str | None = "auto"
    attention_pad_multiple: int = 0
    scan_layers: bool = False
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    # Stochastic depth of the last block (linear from 0 at the first, as timm; DeiT-B: 0.1),
    # in training only; it draws from the 'dropout' rng.
    drop_path_rate: float = 0.0

    def _conv(self, features: int, kernel: int, stride: int, padding, bias: bool, name: str):
        return nn.Conv(
            features,
            kernel_size=(kernel, kernel),
            strides=(stride, stride),
            padding=padding,
            use_bias=bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("patch_h", "patch_w", "channels", "embed")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name=name,
        )

    def _stem(self, images: jax.Array) -> jax.Array:
        """`[B, H, W, 3]` -> `[B, H / P, W / P, D]` patch features."""
        p = self.patch_size
        if self.stem == "patch":
            return self._conv(self.width, p, p, "VALID", self.patch_bias, "patch_embed")(images)
        if self.stem != "conv":
            raise ValueError(f"stem must be 'patch' or 'conv', got {self.stem!r}")
        num_stages = p.bit_length() - 1
        if p != 2**num_stages or p < 2:
            raise ValueError(f"the conv stem needs a power-of-two patch size, got {p}")
        x = images
        for stage in range(num_stages):
            # Channels double each stage and reach the model width at the last one.
            features = self.width // 2 ** (num_stages - 1 - stage)
            x = self._conv(features, 3, 2, ((1, 1), (1, 1)), True, f"stem_conv{stage}")(x)
            x = ACTIVATIONS[self.activation](x)
        return self._conv(self.width, 1, 1, "VALID", self.patch_bias, "patch_embed")(x)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        if self.pool not in ("cls", "gap"):
            raise ValueError(f"pool must be 'cls' or 'gap', got {self.pool!r}")
        if self.output_tokens and self.num_classes:
            raise ValueError("output_tokens=True returns features: it needs num_classes=0")
        height, width = images.shape[1:3]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not divisible by patch size {self.patch_size}"
            )
        ln = lambda name: layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name)

        x = self._stem(images.astype(self.dtype))  # [B, H / P, W / P, D]
        x = rearrange(x, "b h w d -> b (h w) d")  # [B, N, D]

        if self.pool == "cls":
            cls = self.param(
                "cls_token",
                nn.with_logical_partitioning(nn.initializers.zeros, (None, None, "embed")),
                (1, 1, self.width),
                self.param_dtype,
            )
            cls = jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, self.width))
            x = jnp.concatenate([cls, x], axis=1)  # [B, 1 + N, D]
        pos_embed = self.param(
            "pos_embed",
            nn.with_logical_partitioning(
                nn.initializers.normal(stddev=0.02), (None, "length", "embed")
            ),
            (1, x.shape[1], self.width),
            self.param_dtype,
        )
        x = x + pos_embed.astype(self.dtype)
        if self.pre_norm:
            x = ln("ln_pre")(x)
        x = nn.with_logical_constraint(x, ("batch", "act_length", "act_embed"))

        x = Encoder(
            self.depth,
            self.num_heads,
            self.mlp_dim,
            self.activation,
            self.layer_norm_eps,
            attention_impl=self.attention_impl,
            attention_pad_multiple=self.attention_pad_multiple,
            scan_layers=self.scan_layers,
            remat=self.remat,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            drop_path_rate=self.drop_path_rate,
            train=train,
            name="encoder",
        )(x)

        if self.output_tokens:
            return ln("norm")(x)  # [B, N, D]: the pooled features' norm, on every token
        # LayerNorm acts per token, so normalising after taking the class token equals
        # timm's norm-then-pool and CLIP's ln_post on the class token.
        x = x[:, 0] if self.pool == "cls" else x.mean(axis=1)  # [B, D]
        x = ln("norm")(x)
        if not self.num_classes:
            return x
        return classifier_head(
            self.num_classes,
            self.dtype,
            self.param_dtype,
            "head",
            kernel_init=nn.initializers.zeros,  # a zero head, as big_vision's ViT
        )(x)


# Widths, depths and heads from Table 1 of the ViT paper (Ti and S from DeiT).
VIT_SIZES: dict[str, dict[str, int]] = {
    "ti": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    "s": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "b": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "l": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
    # Tiny variant for tests: seconds on a CPU.
    "test": dict(width=32, depth=2, num_heads=2, mlp_dim=64),
}

VIT_VARIANTS: dict[str, dict[str, Any]] = {
    "vit_ti16": dict(patch_size=16, **VIT_SIZES["ti"]),
    "vit_s16": dict(patch_size=16, **VIT_SIZES["s"]),
    "vit_b16": dict(patch_size=16, **VIT_SIZES["b"]),
    "vit_b32": dict(patch_size=32, **VIT_SIZES["b"]),
    "vit_l14": dict(patch_size=14, **VIT_SIZES["l"]),
    "vit_l16": dict(patch_size=16, **VIT_SIZES["l"]),
    "vit_test": dict(patch_size=8, **VIT_SIZES["test"], num_classes=10),
}
