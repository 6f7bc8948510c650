"""AlexNet (Krizhevsky et al. 2012, "ImageNet Classification with Deep Convolutional Neural
Networks"), torchvision layout.

Matches torchvision's `torchvision/models/alexnet.py` (`AlexNet`), which follows the one-tower
model of Krizhevsky 2014 ("One weird trick for parallelizing convolutional neural networks"),
not the two-GPU network of the 2012 paper:
- Five convs with bias and ReLU: 11x11 stride 4 padding 2 (64), 5x5 padding 2 (192), then
  3x3 padding 1 (384, 256, 256). No grouped convs and no local response normalisation.
- Overlapping 3x3 stride-2 max pools without padding after conv1, conv2 and conv5; the output
  size rounds down, as torch's `ceil_mode=False`.
- Adaptive average pool to 6x6 (the identity at 224x224), flattened channel-major like torch's
  NCHW `flatten`, so `fc6` is torch's `Linear` transposed with no reordering of its inputs.
- Classifier (`Classifier`, shared with VGG): Dropout, fc6, ReLU, Dropout, fc7, ReLU, fc8;
  dropout 0.5 sits *before* each hidden Linear here (VGG puts it after the ReLU).

Input: NHWC float images `[B, H, W, 3]` with H, W >= 63 (`MIN_SIZE`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import linen as nn

from jaxmm.models.layers import adaptive_avg_pool

Dtype = Any

# (kernel, stride, padding, max pool after) of conv1..conv5, from torchvision's `features`.
_CONVS = ((11, 4, 2, True), (5, 1, 2, True), (3, 1, 1, False), (3, 1, 1, False), (3, 1, 1, True))
# conv1 maps 63 px to 15, the pools 15 -> 7 -> 3 -> 1; below 63 the last pool has nothing left.
MIN_SIZE = 63
POOL_SIZE = 6  # torchvision's AdaptiveAvgPool2d((6, 6))
# torch's default Conv2d init (kaiming_uniform_ with a=sqrt(5)) is U(+-1/sqrt(fan_in)).
_CONV_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
_CONV_AXES = ("conv_h", "conv_w", "channels", "embed")


class Classifier(nn.Module):
    """AlexNet's head, kept by VGG: `[B, D]` -> fc6, fc7 (`hidden` wide, ReLU, dropout), fc8.

    Attributes:
        hidden: width of fc6 and fc7 (4096 in both papers).
        num_classes: fc8 outputs; 0 stops after fc7's ReLU (and dropout, when it comes after)
            and returns those `[B, hidden]` features.
        dropout: drop rate of the two dropout layers (0.5 in both papers).
        dropout_first: AlexNet's order, dropout before fc6 and fc7; False is VGG's, dropout
            after each hidden ReLU.
    """

    hidden: int = 4096
    num_classes: int = 1000
    dropout: float = 0.5
    dropout_first: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def dense(self, features: int, axes: tuple[str | None, str | None], name: str) -> nn.Dense:
        return nn.Dense(
            features,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            # N(0, 0.01) as the AlexNet paper and torchvision's VGG (its AlexNet keeps
            # nn.Linear's default); any sane init works for conversion.
            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.01), axes),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
            name=name,
        )

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        drop = nn.Dropout(self.dropout, deterministic=not train)
        for name, axes in (("fc6", ("embed", "mlp")), ("fc7", ("mlp", "embed"))):
            if self.dropout_first:
                x = drop(x)
            x = nn.relu(self.dense(self.hidden, axes, name)(x))  # [B, hidden]
            if not self.dropout_first:
                x = drop(x)
        if not self.num_classes:
            return x
        return self.dense(self.num_classes, ("embed", None), "fc8")(x)


class AlexNet(nn.Module):
    """AlexNet classifier: `[B, H, W, 3]` -> logits `[B, num_classes]` (features if 0).

    Attributes:
        widths: output channels of conv1..conv5.
        hidden: width of fc6 and fc7.
        num_classes: classifier outputs; 0 returns fc7's `[B, hidden]` features.
        dropout: drop rate before fc6 and fc7 (train mode only; needs a 'dropout' rng).
    """

    widths: tuple[int, ...] = (64, 192, 384, 256, 256)
    hidden: int = 4096
    num_classes: int = 1000
    dropout: float = 0.5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        if len(self.widths) != len(_CONVS):
            raise ValueError(f"AlexNet has {len(_CONVS)} convs, got widths {self.widths}")
        if min(images.shape[1:3]) < MIN_SIZE:
            raise ValueError(
                f"AlexNet needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {images.shape}"
            )
        x = images.astype(self.dtype)
        for i, (kernel, stride, pad, pool) in enumerate(_CONVS):
            x = nn.Conv(
                self.widths[i],
                kernel_size=(kernel, kernel),
                strides=(stride, stride),
                padding=((pad, pad), (pad, pad)),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=nn.with_logical_partitioning(_CONV_INIT, _CONV_AXES),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                name=f"conv{i + 1}",
            )(x)
            x = nn.relu(x)
            if pool:
                x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
        x = nn.with_logical_constraint(x, ("batch", None, None, "act_embed"))
        x = adaptive_avg_pool(x, POOL_SIZE)  # [B, 6, 6, C]
        x = rearrange(x, "b h w c -> b (c h w)")  # torch's flatten order
        return Classifier(
            hidden=self.hidden,
            num_classes=self.num_classes,
            dropout=self.dropout,
            dropout_first=True,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="classifier",
        )(x, train=train)


ALEXNET_VARIANTS: dict[str, dict[str, Any]] = {
    # torchvision's widths; the 2012 paper's Figure 2 has 96/256/384/384/256 split over two GPUs.
    "alexnet": dict(),
    # Tiny variant for tests: its three 3x3 stride-2 pools need 64x64 inputs (see MIN_SIZE).
    "alexnet_test": dict(widths=(8, 16, 16, 16, 16), hidden=32, num_classes=10),
}
