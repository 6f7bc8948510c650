"""VGG (Simonyan and Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image
Recognition"), torchvision layout.

Matches torchvision's `torchvision/models/vgg.py` (`VGG`, `make_layers`, `cfgs` 'A', 'B', 'D',
'E' = VGG-11, 13, 16, 19, the configurations of the paper's Table 1):
- Five stages of 3x3 convs with padding 1 and ReLU, each stage closed by a 2x2 stride-2 max
  pool (output size rounded down, as torch's `ceil_mode=False`).
- Every conv has a bias, even in the `_bn` variants where a BatchNorm follows it and makes the
  bias redundant (torchvision's `make_layers` keeps `bias=True`); the checkpoints carry it.
- The `_bn` variants (not in the paper) put BatchNorm between each conv and its ReLU: eps 1e-5,
  torch momentum 0.1 and the unbiased running variance (see `layers.BatchNorm`).
- Adaptive average pool to 7x7 (the identity at 224x224; it replicates the 1x1 map of a 32x32
  input), flattened channel-major like torch's NCHW `flatten`.
- AlexNet's classifier (`alexnet.Classifier`) with dropout 0.5 *after* each hidden ReLU:
  fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8.

Input: NHWC float images `[B, H, W, 3]` with H, W >= 32 (one pixel left after five pools).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import linen as nn

from jaxmm.models.alexnet import Classifier
from jaxmm.models.layers import BatchNorm, adaptive_avg_pool

Dtype = Any

POOL_SIZE = 7  # torchvision's AdaptiveAvgPool2d((7, 7))
# torchvision initialises VGG's convs with kaiming_normal_(mode='fan_out', nonlinearity='relu').
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_CONV_AXES = ("conv_h", "conv_w", "channels", "embed")


class VGG(nn.Module):
    """VGG classifier: `[B, H, W, 3]` -> logits `[B, num_classes]` (features if 0).

    Conv j of stage i is `conv{i}_{j}` (and `bn{i}_{j}`), the paper's naming, both from 1.

    Attributes:
        stages: output channels of each 3x3 conv, one tuple per max-pooled stage.
        batch_norm: BatchNorm after every conv (torchvision's `vgg*_bn`).
        hidden: width of fc6 and fc7.
        num_classes: classifier outputs; 0 returns fc7's `[B, hidden]` features (after its
            ReLU and dropout).
        dropout: drop rate after fc6 and fc7 (train mode only; needs a 'dropout' rng).
    """

    stages: tuple[tuple[int, ...], ...] = ((64,), (128,), (256, 256), (512, 512), (512, 512))
    batch_norm: bool = False
    hidden: int = 4096
    num_classes: int = 1000
    dropout: float = 0.5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        min_size = 2 ** len(self.stages)
        if min(images.shape[1:3]) < min_size:
            raise ValueError(
                f"VGG with {len(self.stages)} pooled stages needs images of at least "
                f"{min_size}x{min_size}, got {images.shape}"
            )
        x = images.astype(self.dtype)
        for i, stage in enumerate(self.stages, start=1):
            for j, width in enumerate(stage, start=1):
                x = nn.Conv(
                    width,
                    kernel_size=(3, 3),
                    padding=((1, 1), (1, 1)),
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    kernel_init=nn.with_logical_partitioning(_CONV_INIT, _CONV_AXES),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                    name=f"conv{i}_{j}",
                )(x)
                if self.batch_norm:
                    x = BatchNorm(
                        dtype=self.dtype, param_dtype=self.param_dtype, name=f"bn{i}_{j}"
                    )(x, train=train)
                x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")  # [B, H / 2^i, ..]
            x = nn.with_logical_constraint(x, ("batch", None, None, "act_embed"))
        x = adaptive_avg_pool(x, POOL_SIZE)  # [B, 7, 7, C]
        x = rearrange(x, "b h w c -> b (c h w)")  # torch's flatten order
        return Classifier(
            hidden=self.hidden,
            num_classes=self.num_classes,
            dropout=self.dropout,
            dropout_first=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="classifier",
        )(x, train=train)


# Table 1 of the VGG paper: configurations A (11 weight layers), B (13), D (16), E (19).
_STAGES = {
    11: ((64,), (128,), (256,) * 2, (512,) * 2, (512,) * 2),
    13: ((64,) * 2, (128,) * 2, (256,) * 2, (512,) * 2, (512,) * 2),
    16: ((64,) * 2, (128,) * 2, (256,) * 3, (512,) * 3, (512,) * 3),
    19: ((64,) * 2, (128,) * 2, (256,) * 4, (512,) * 4, (512,) * 4),
}
VGG_VARIANTS: dict[str, dict[str, Any]] = {
    **{f"vgg{depth}": dict(stages=stages) for depth, stages in _STAGES.items()},
    **{f"vgg{depth}_bn": dict(stages=stages, batch_norm=True) for depth, stages in _STAGES.items()},
    # Tiny variant for tests: VGG-11 narrowed, with BatchNorm so the model tests cover it.
    "vgg_test": dict(
        stages=((8,), (16,), (16, 16), (16, 16), (16, 16)),
        batch_norm=True,
        hidden=32,
        num_classes=10,
    ),
}
