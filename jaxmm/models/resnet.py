"""ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition"), torchvision layout.

Matches torchvision's `torchvision/models/resnet.py` (`ResNet`, `BasicBlock`, `Bottleneck`):
- ResNet v1.5: the bottleneck's stride sits on its 3x3 conv (`conv2`), not on the first 1x1.
- Stem: 7x7 stride-2 conv, padding 3, no bias; BatchNorm; ReLU; 3x3 stride-2 max pool, padding 1.
- Every conv is bias-free with explicit symmetric padding: Flax's `'SAME'` pads asymmetrically
  at stride 2 and would shift every feature map against PyTorch's.
- Shortcut: identity, or a 1x1 stride-s conv + BatchNorm (`downsample`) when the shape changes.
- BatchNorm: eps 1e-5, torch momentum 0.1 (0.9 as the running average's decay here), and the
  running variance is updated with the *unbiased* batch variance, as torch does (Flax's
  `nn.BatchNorm` uses the biased one, so it is not used here; see `BatchNorm`).
- Global average pool, then the `fc` classifier; `num_classes=0` returns the pooled features
  `[B, C]` (C = 512 for BasicBlock, 2048 for Bottleneck) so the model can serve as an image tower.

Input: NHWC float images `[B, H, W, 3]` of any size (the pool is global).

`stem='cifar'` is the common small-image variant (He et al. 2016, section 4.2, as used for
CIFAR-sized inputs): a 3x3 stride-1 conv and no max pool, so a 32x32 image keeps 32x32
features in the first stage instead of 8x8. It has no torchvision weights.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import linen as nn

from jaxmm.models.layers import BatchNorm, classifier_head

Dtype = Any

# torchvision initialises convs with kaiming_normal_(mode='fan_out', nonlinearity='relu').
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_CONV_AXES = ("conv_h", "conv_w", "channels", "embed")


class ConvBnLayers(nn.Module):
    """Bias-free conv and BatchNorm factories shared by the ResNet families (torchvision's and
    OpenAI's ModifiedResNet); holds the dtype settings."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def conv(self, features: int, kernel: int, stride: int, name: str) -> nn.Conv:
        pad = kernel // 2  # torchvision: 7x7 pad 3, 3x3 pad 1, 1x1 pad 0
        return nn.Conv(
            features,
            kernel_size=(kernel, kernel),
            strides=(stride, stride),
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(_CONV_INIT, _CONV_AXES),
            name=name,
        )

    def norm(self, name: str) -> BatchNorm:
        return BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=name)


class BasicBlock(ConvBnLayers):
    """Two 3x3 convs: `[B, H, W, Cin]` -> `[B, H / s, W / s, features]` (expansion 1)."""

    features: int = 64
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = nn.relu(
            self.norm("bn1")(self.conv(self.features, 3, self.stride, "conv1")(x), train=train)
        )
        y = self.norm("bn2")(self.conv(self.features, 3, 1, "conv2")(y), train=train)
        return nn.relu(y + _shortcut(self, x, self.features, train))


class Bottleneck(ConvBnLayers):
    """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand: -> `[B, H / s, W / s, 4 * features]`."""

    features: int = 64
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = nn.relu(self.norm("bn1")(self.conv(self.features, 1, 1, "conv1")(x), train=train))
        y = nn.relu(
            self.norm("bn2")(self.conv(self.features, 3, self.stride, "conv2")(y), train=train)
        )
        y = self.norm("bn3")(self.conv(4 * self.features, 1, 1, "conv3")(y), train=train)
        return nn.relu(y + _shortcut(self, x, 4 * self.features, train))


def _shortcut(block: BasicBlock | Bottleneck, x: jax.Array, out: int, train: bool) -> jax.Array:
    """Identity, or torchvision's `downsample` (1x1 stride-s conv + BN) when shapes differ."""
    if block.stride == 1 and x.shape[-1] == out:
        return x
    # Named `downsample_conv`/`downsample_bn`: torchvision's `downsample.0`/`downsample.1`.
    x = block.conv(out, 1, block.stride, "downsample_conv")(x)
    return block.norm("downsample_bn")(x, train=train)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}


class ResNet(ConvBnLayers):
    """ResNet classifier: `[B, H, W, 3]` -> logits `[B, num_classes]` (features if 0).

    Attributes:
        block: `'basic'` (ResNet-18/34) or `'bottleneck'` (ResNet-50 and deeper).
        stage_sizes: blocks per stage (torchvision's `layers`), four stages.
        width: channels of the stem and of the first stage; doubled at each later stage.
        num_classes: classifier outputs; 0 returns the pooled features.
        output_tokens: with `num_classes=0`, the last feature map as a sequence
            `[B, h * w, C]` (row-major) instead of its average.
        stem: `'imagenet'` (7x7/2 conv + 3x3/2 max pool, torchvision) or `'cifar'` (3x3/1
            conv, no pool, for 32 px images).
    """

    block: str = "bottleneck"
    stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    num_classes: int = 1000
    output_tokens: bool = False
    stem: str = "imagenet"

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {self.block!r}")
        if self.stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {self.stem!r}")
        if self.output_tokens and self.num_classes:
            raise ValueError("output_tokens=True returns features: it needs num_classes=0")
        block = BLOCKS[self.block]
        images = images.astype(self.dtype)
        if self.stem == "imagenet":
            x = self.conv(self.width, 7, 2, "conv1")(images)  # [B, H/2, W/2, w]
            x = nn.relu(self.norm("bn1")(x, train=train))
            # Max pool pads with -inf (torch does too), so padding never wins the max.
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # [B, H/4, W/4, w]
        else:
            x = nn.relu(self.norm("bn1")(self.conv(self.width, 3, 1, "conv1")(images), train=train))
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                x = block(
                    features=self.width * 2**i,
                    stride=stride,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f"layer{i + 1}_{j}",
                )(x, train=train)
            x = nn.with_logical_constraint(x, ("batch", None, None, "act_embed"))
        if self.output_tokens:
            return rearrange(x, "b h w c -> b (h w) c")
        x = x.mean(axis=(1, 2))  # [B, C]
        if not self.num_classes:
            return x
        return classifier_head(self.num_classes, self.dtype, self.param_dtype, "fc")(x)


# Depths from Table 1 of the ResNet paper.
RESNET_VARIANTS: dict[str, dict[str, Any]] = {
    "resnet18": dict(block="basic", stage_sizes=(2, 2, 2, 2)),
    "resnet34": dict(block="basic", stage_sizes=(3, 4, 6, 3)),
    "resnet50": dict(block="bottleneck", stage_sizes=(3, 4, 6, 3)),
    "resnet101": dict(block="bottleneck", stage_sizes=(3, 4, 23, 3)),
    "resnet152": dict(block="bottleneck", stage_sizes=(3, 8, 36, 3)),
    # Tiny variant for tests: seconds on a CPU, inputs of 32x32 or larger.
    "resnet_test": dict(block="basic", stage_sizes=(1, 1, 1, 1), width=8, num_classes=10),
}
