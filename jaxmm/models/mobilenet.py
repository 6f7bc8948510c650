"""MobileNet v1, v2 and v3: depthwise-separable CNNs for small compute budgets.

- v1: Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
  Applications". Matches timm's `mobilenetv1_100` (`timm/models/efficientnet.py`,
  `_gen_mobilenet_v1`; blocks `DepthwiseSeparableConv` of type `dsa`), which differs from the
  paper in using ReLU6 rather than ReLU.
- v2: Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks". Matches
  torchvision's `torchvision/models/mobilenetv2.py` (`MobileNetV2`, `InvertedResidual`).
- v3: Howard et al. 2019, "Searching for MobileNetV3". Matches torchvision's
  `torchvision/models/mobilenetv3.py` (`MobileNetV3`, `InvertedResidual`,
  `torchvision.ops.SqueezeExcitation`).

Facts the references fix and parity depends on:
- Every conv is bias-free and followed by BatchNorm, with explicit symmetric padding
  `(k - 1) // 2` (what torchvision's `Conv2dNormActivation` and timm's default `pad_type=''`
  use); Flax's `'SAME'` pads asymmetrically at stride 2. Depthwise convs are grouped convs with
  one group per channel (`feature_group_count`), kernel `[k, k, 1, C]`.
- Channel counts are rounded by `make_divisible(c * width_mult, 8)` (the TF original's rule;
  torchvision and timm share it).
- v1 blocks are depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + ReLU6, never residual.
- Inverted residual (v2, v3): optional 1x1 expansion (skipped when it would keep the width),
  depthwise kxk, optional squeeze-excite (v3), linear 1x1 projection; the identity shortcut is
  added when stride is 1 and the width is kept.
- BatchNorm: v1/v2 eps 1e-5, torch momentum 0.1 (decay 0.9); v3 eps 1e-3, momentum 0.01
  (decay 0.99). `BatchNorm` from `layers.py` follows torch's unbiased running-variance rule.
- v3 activations: hardswish `x * relu6(x + 3) / 6` and, in squeeze-excite, hardsigmoid
  `relu6(x + 3) / 6` (torch's piecewise-linear definitions, not the sigmoid ones). SE squeezes
  to `make_divisible(expanded // 4, 8)` channels with two bias-ful 1x1 convs, ReLU between.
- Heads: global average pool, then v1 `classifier` (timm default dropout 0); v2 dropout 0.2 and
  `classifier`; v3 `Linear -> hardswish -> dropout 0.2 -> Linear` (torchvision's
  `classifier.0`..`classifier.3`, here `pre_logits` and `classifier`).

`num_classes=0` returns the features the final Linear would see, `[B, D]`, dropout included
(timm's `forward_head(pre_logits=True)` position, and what torchvision gives with its last
Linear replaced by `Identity`): v1 the pooled 1024-d map, v2 the pooled 1280-d map, v3 the
hardswish output of the first head Linear (1280-d large, 1024-d small).

Input: NHWC float images `[B, H, W, 3]` of any size (the pool is global).

Not modelled: torchvision v3's `dilated`/`reduced_tail` (segmentation backbones) and timm's
v1 options beyond `mobilenetv1_100` and its width multipliers (head conv, group size, s2d).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxmm.models.layers import BatchNorm, classifier_head

Dtype = Any

# torchvision initialises convs with kaiming_normal_(mode='fan_out'); timm's efficientnet
# init draws from the same fan-out normal.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_CONV_AXES = ("conv_h", "conv_w", "channels", "embed")

# torch's `nn.Hardswish`/`nn.Hardsigmoid` are jax's `hard_swish`/`hard_sigmoid` exactly:
# x * relu6(x + 3) / 6 and relu6(x + 3) / 6.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "hardswish": jax.nn.hard_swish,
}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds a channel count to the nearest multiple of `divisor`, never below 90% of it.

    The TF MobileNet rule that torchvision's and timm's `_make_divisible` both copy.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class _Module(nn.Module):
    """Settings every MobileNet layer shares: dtypes and the BatchNorm constants."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    bn_momentum: float = 0.9  # decay of the running average: torch's momentum 0.1
    bn_eps: float = 1e-5

    def shared(self) -> dict[str, Any]:
        """The fields above, to hand down to child modules."""
        return dict(
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            bn_momentum=self.bn_momentum,
            bn_eps=self.bn_eps,
        )

    def conv_bn(
        self,
        features: int,
        kernel: int,
        stride: int = 1,
        *,
        depthwise: bool = False,
        activation: str | None = None,
        name: str,
    ) -> ConvBN:
        return ConvBN(
            features=features,
            kernel=kernel,
            stride=stride,
            depthwise=depthwise,
            activation=activation,
            **self.shared(),
            name=name,
        )

    def dense(self, features: int, name: str) -> nn.Dense:
        # The references init Linear with normal(0, 0.01); any sane init trains.
        return classifier_head(
            features, self.dtype, self.param_dtype, name, kernel_init=nn.initializers.normal(0.01)
        )


class ConvBN(_Module):
    """Conv (no bias) -> BatchNorm -> optional activation: torchvision's `Conv2dNormActivation`.

    `[B, H, W, Cin]` -> `[B, H / stride, W / stride, features]`; `depthwise` convolves each
    channel separately (then `features` must equal `Cin`).
    """

    features: int = 0
    kernel: int = 1
    stride: int = 1
    depthwise: bool = False
    activation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        pad = (self.kernel - 1) // 2
        x = nn.Conv(
            self.features,
            kernel_size=(self.kernel, self.kernel),
            strides=(self.stride, self.stride),
            padding=((pad, pad), (pad, pad)),
            feature_group_count=x.shape[-1] if self.depthwise else 1,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(_CONV_INIT, _CONV_AXES),
            name="conv",
        )(x)
        x = BatchNorm(
            momentum=self.bn_momentum,
            epsilon=self.bn_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="bn",
        )(x, train=train)
        return ACTIVATIONS[self.activation](x) if self.activation else x


class SqueezeExcite(_Module):
    """Channel gating `x * hardsigmoid(fc2(relu(fc1(mean_hw(x)))))`, `[B, H, W, C]` -> same.

    torchvision's `SqueezeExcitation` with `scale_activation=nn.Hardsigmoid`; `fc1`/`fc2` are
    1x1 convs with bias, kept as convs so their kernels convert like every other conv.
    """

    squeeze: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def conv(features: int, name: str) -> nn.Conv:
            return nn.Conv(
                features,
                kernel_size=(1, 1),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=nn.with_logical_partitioning(_CONV_INIT, _CONV_AXES),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                name=name,
            )

        scale = x.mean(axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
        scale = nn.relu(conv(self.squeeze, "fc1")(scale))  # [B, 1, 1, squeeze]
        scale = jax.nn.hard_sigmoid(conv(x.shape[-1], "fc2")(scale))  # [B, 1, 1, C]
        return x * scale


class DepthwiseSeparable(_Module):
    """MobileNet v1 block (timm `dsa`): depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + ReLU6.

    `[B, H, W, Cin]` -> `[B, H / stride, W / stride, features]`; no shortcut.
    """

    features: int = 0
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        channels = x.shape[-1]
        x = self.conv_bn(channels, 3, self.stride, depthwise=True, activation="relu6", name="dw")(
            x, train=train
        )
        return self.conv_bn(self.features, 1, activation="relu6", name="pw")(x, train=train)


class BlockConfig(NamedTuple):
    """One inverted residual block with its channel counts already rounded."""

    in_channels: int
    expanded: int
    out_channels: int
    kernel: int
    stride: int
    use_se: bool
    activation: str

    @property
    def has_expand(self) -> bool:
        # Both references skip the 1x1 expansion when it would keep the width (v2's t = 1).
        return self.expanded != self.in_channels

    @property
    def has_shortcut(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


class InvertedResidual(_Module):
    """v2/v3 block: [expand 1x1] -> depthwise kxk -> [SE] -> linear project 1x1 (+ identity).

    `[B, H, W, in_channels]` -> `[B, H / stride, W / stride, out_channels]`.
    """

    config: BlockConfig | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        cfg = self.config
        y = x
        if cfg.has_expand:
            y = self.conv_bn(cfg.expanded, 1, activation=cfg.activation, name="expand")(
                y, train=train
            )
        y = self.conv_bn(
            cfg.expanded,
            cfg.kernel,
            cfg.stride,
            depthwise=True,
            activation=cfg.activation,
            name="dw",
        )(y, train=train)
        if cfg.use_se:
            squeeze = make_divisible(cfg.expanded // 4)
            y = SqueezeExcite(squeeze=squeeze, **self.shared(), name="se")(y)
        # The projection is linear: the "linear bottleneck" of the v2 paper.
        y = self.conv_bn(cfg.out_channels, 1, name="project")(y, train=train)
        return x + y if cfg.has_shortcut else y


class _MobileNet(_Module):
    """The classifier every version ends with: dropout, then the `classifier` Linear."""

    num_classes: int = 1000
    dropout: float = 0.0  # timm's v1 default; torchvision's v2 and v3 use 0.2

    def classify(self, x: jax.Array, train: bool) -> jax.Array:
        """`[B, D]` -> logits `[B, num_classes]`, or the features `[B, D]` if `num_classes=0`."""
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        if not self.num_classes:
            return x
        return self.dense(self.num_classes, "classifier")(x)


class MobileNetV1(_MobileNet):
    """MobileNet v1 (timm layout): `[B, H, W, 3]` -> logits `[B, num_classes]` (features if 0).

    Attributes:
        stages: `(channels, blocks, stride)` per stage; the stride applies to the first block.
        stem_channels: width of the 3x3 stride-2 stem, before `width_mult`.
        width_mult: the paper's width multiplier alpha, applied to every layer.
    """

    stages: tuple[tuple[int, int, int], ...] = ()
    stem_channels: int = 32
    width_mult: float = 1.0

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        stem = make_divisible(self.stem_channels * self.width_mult)
        x = self.conv_bn(stem, 3, 2, activation="relu6", name="stem")(
            images.astype(self.dtype), train=train
        )  # [B, H/2, W/2, stem]
        for i, (channels, num_blocks, stride) in enumerate(self.stages):
            for j in range(num_blocks):
                x = DepthwiseSeparable(
                    features=make_divisible(channels * self.width_mult),
                    stride=stride if j == 0 else 1,
                    **self.shared(),
                    name=f"blocks_{i}_{j}",
                )(x, train=train)
            x = nn.with_logical_constraint(x, ("batch", None, None, "act_embed"))
        return self.classify(x.mean(axis=(1, 2)), train)  # pooled [B, C]


class _InvertedResidualNet(_MobileNet):
    """The v2/v3 body, torchvision's `features`: modules `features_0` .. `features_{n + 1}`."""

    def body(
        self, images: jax.Array, configs: list[BlockConfig], head: int, act: str, train: bool
    ) -> jax.Array:
        """Stem, the blocks, 1x1 head conv: `[B, H, W, 3]` -> `[B, H / 32, W / 32, head]`."""
        x = self.conv_bn(configs[0].in_channels, 3, 2, activation=act, name="features_0")(
            images.astype(self.dtype), train=train
        )  # [B, H/2, W/2, stem]
        for i, config in enumerate(configs, start=1):
            x = InvertedResidual(config=config, **self.shared(), name=f"features_{i}")(
                x, train=train
            )
            x = nn.with_logical_constraint(x, ("batch", None, None, "act_embed"))
        head_conv = self.conv_bn(head, 1, activation=act, name=f"features_{len(configs) + 1}")
        return head_conv(x, train=train)


class MobileNetV2(_InvertedResidualNet):
    """MobileNet v2 (torchvision layout): `[B, H, W, 3]` -> logits `[B, num_classes]`.

    Attributes:
        stages: the paper's `(t, c, n, s)` rows: expansion, channels, blocks, first stride.
        width_mult: width multiplier; the 1280-wide head conv only grows with it, never shrinks.
    """

    stages: tuple[tuple[int, int, int, int], ...] = ()
    width_mult: float = 1.0
    dropout: float = 0.2

    def block_configs(self) -> list[BlockConfig]:
        """The blocks in order, channels rounded as torchvision's `MobileNetV2.__init__` does."""
        # torchvision fixes the stem at 32 channels and the head conv at 1280 (both scaled).
        configs, in_channels = [], make_divisible(32 * self.width_mult)
        for t, c, n, s in self.stages:
            out_channels = make_divisible(c * self.width_mult)
            for j in range(n):
                expanded = int(round(in_channels * t))
                stride = s if j == 0 else 1
                configs.append(
                    BlockConfig(in_channels, expanded, out_channels, 3, stride, False, "relu6")
                )
                in_channels = out_channels
        return configs

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        head = make_divisible(1280 * max(1.0, self.width_mult))
        x = self.body(images, self.block_configs(), head, "relu6", train)
        return self.classify(x.mean(axis=(1, 2)), train)  # pooled [B, head]


class MobileNetV3(_InvertedResidualNet):
    """MobileNet v3 (torchvision layout): `[B, H, W, 3]` -> logits `[B, num_classes]`.

    Attributes:
        blocks: per block `(kernel, expanded, out, use_se, activation, stride)`, the paper's
            Table 1 (large) / Table 2 (small) with activation `'relu'` (RE) or `'hardswish'` (HS).
        stem_channels: width of the stem (the first block's input).
        last_channels: width of the head's hidden Linear (the `pre_logits` features).
        width_mult: width multiplier, applied to every count above.
    """

    blocks: tuple[tuple[int, int, int, bool, str, int], ...] = ()
    stem_channels: int = 16
    last_channels: int = 1280
    width_mult: float = 1.0
    dropout: float = 0.2
    bn_momentum: float = 0.99  # torch momentum 0.01
    bn_eps: float = 1e-3

    def block_configs(self) -> list[BlockConfig]:
        """The blocks in order, channels rounded as torchvision's `InvertedResidualConfig`."""
        scale = lambda c: make_divisible(c * self.width_mult)
        configs, in_channels = [], scale(self.stem_channels)
        for kernel, expanded, out, use_se, activation, stride in self.blocks:
            configs.append(
                BlockConfig(
                    in_channels, scale(expanded), scale(out), kernel, stride, use_se, activation
                )
            )
            in_channels = scale(out)
        return configs

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        configs = self.block_configs()
        head = 6 * configs[-1].out_channels  # torchvision: lastconv = 6 * last block's output
        x = self.body(images, configs, head, "hardswish", train)
        x = x.mean(axis=(1, 2))  # [B, head]
        hidden = make_divisible(self.last_channels * self.width_mult)
        x = jax.nn.hard_swish(self.dense(hidden, "pre_logits")(x))  # [B, hidden]
        return self.classify(x, train)


# Width multiplier 1.0 rows from Table 1 of the v1 paper (timm's `mobilenetv1_100`).
MOBILENET_V1_VARIANTS: dict[str, dict[str, Any]] = {
    "mobilenet_v1": dict(
        stages=((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)),
    ),
    # Tiny: width 0.25 (channels 8..256) and one block per stage but three at 512 (two
    # stride-1 blocks); timm's `_gen_mobilenet_v1(channel_multiplier=0.25,
    # depth_multiplier=0.5)` builds the same network.
    "mobilenet_v1_test": dict(
        stages=((64, 1, 1), (128, 1, 2), (256, 1, 2), (512, 3, 2), (1024, 1, 2)),
        width_mult=0.25,
        num_classes=10,
    ),
}

# `(t, c, n, s)` rows from Table 2 of the v2 paper.
MOBILENET_V2_VARIANTS: dict[str, dict[str, Any]] = {
    "mobilenet_v2": dict(
        stages=(
            (1, 16, 1, 1),
            (6, 24, 2, 2),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
            (6, 160, 3, 2),
            (6, 320, 1, 1),
        ),
    ),
    # Tiny: width 0.25; a t=1 block (no expansion), stride-2 and residual expanded blocks.
    "mobilenet_v2_test": dict(
        stages=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2)),
        width_mult=0.25,
        num_classes=10,
    ),
}

RE, HS = "relu", "hardswish"
# `(kernel, expanded, out, use_se, activation, stride)` from Tables 1 and 2 of the v3 paper, as
# torchvision's `_mobilenet_v3_conf` lists them.
MOBILENET_V3_VARIANTS: dict[str, dict[str, Any]] = {
    "mobilenet_v3_large": dict(
        blocks=(
            (3, 16, 16, False, RE, 1),
            (3, 64, 24, False, RE, 2),
            (3, 72, 24, False, RE, 1),
            (5, 72, 40, True, RE, 2),
            (5, 120, 40, True, RE, 1),
            (5, 120, 40, True, RE, 1),
            (3, 240, 80, False, HS, 2),
            (3, 200, 80, False, HS, 1),
            (3, 184, 80, False, HS, 1),
            (3, 184, 80, False, HS, 1),
            (3, 480, 112, True, HS, 1),
            (3, 672, 112, True, HS, 1),
            (5, 672, 160, True, HS, 2),
            (5, 960, 160, True, HS, 1),
            (5, 960, 160, True, HS, 1),
        ),
        last_channels=1280,
    ),
    "mobilenet_v3_small": dict(
        blocks=(
            (3, 16, 16, True, RE, 2),
            (3, 72, 24, False, RE, 2),
            (3, 88, 24, False, RE, 1),
            (5, 96, 40, True, HS, 2),
            (5, 240, 40, True, HS, 1),
            (5, 240, 40, True, HS, 1),
            (5, 120, 48, True, HS, 1),
            (5, 144, 48, True, HS, 1),
            (5, 288, 96, True, HS, 2),
            (5, 576, 96, True, HS, 1),
            (5, 576, 96, True, HS, 1),
        ),
        last_channels=1024,
    ),
    # Tiny: every block kind once: unexpanded SE stride 2 (ReLU), expanded stride 2 and
    # residual (ReLU, no SE), 5x5 SE stride 2 and residual (hardswish), residual without SE.
    "mobilenet_v3_test": dict(
        blocks=(
            (3, 8, 8, True, RE, 2),
            (3, 24, 16, False, RE, 2),
            (3, 32, 16, False, RE, 1),
            (5, 48, 24, True, HS, 2),
            (5, 48, 24, True, HS, 1),
            (3, 48, 24, False, HS, 1),
        ),
        stem_channels=8,
        last_channels=64,
        num_classes=10,
    ),
}
