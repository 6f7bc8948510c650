"""torchvision <-> jaxmm weight layouts: one key map per model family, picked by model class.

## ResNet (`resnet*`)

Reference: torchvision's `torchvision/models/resnet.py` (`ResNet`, `BasicBlock`, `Bottleneck`).
Layout facts this mapping relies on:

- Stem `conv1` (7x7, no bias) and `bn1`; stages `layer1`..`layer4`, block `j` of stage `i` is
  `layer{i}.{j}` (jaxmm: `layer{i}_{j}`), with `conv1/bn1/conv2/bn2` (BasicBlock) plus
  `conv3/bn3` (Bottleneck); the shortcut is `downsample.0` (1x1 conv) and `downsample.1` (BN)
  (jaxmm: `downsample_conv`, `downsample_bn`); the classifier is `fc`.
- Conv weights OIHW `[O, I, kh, kw]` <-> Flax HWIO `[kh, kw, I, O]`; no conv has a bias.
- BatchNorm `weight`/`bias` are Flax `params` `scale`/`bias`; the buffers `running_mean` and
  `running_var` are `batch_stats` `mean`/`var`. `num_batches_tracked` is dropped (Flax keeps no
  step counter; torch only uses it when `momentum=None`) and written back as 0 by `to_torch`.
- Linear `fc.weight` `[out, in]` <-> Dense kernel `[in, out]`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxmm.convert.layout import CONV, KeyMap, Shape, batch_norm, linear
from jaxmm.models.resnet import ResNet


def _conv(torch_prefix: str, flax_path: tuple[str, ...]) -> KeyMap:
    return {f"{torch_prefix}.weight": (("params", *flax_path, "kernel"), CONV)}


def resnet_key_map(model: ResNet) -> KeyMap:
    """Maps every torchvision ResNet state-dict key to its Flax path and transform.

    Args:
        model: a `jaxmm.models.resnet.ResNet` (only its config is read).
    """
    mapping: KeyMap = {**_conv("conv1", ("conv1",)), **batch_norm("bn1", ("bn1",))}
    convs = 3 if model.block == "bottleneck" else 2
    expansion = 4 if model.block == "bottleneck" else 1
    in_channels = model.width
    for i, num_blocks in enumerate(model.stage_sizes):
        out_channels = model.width * 2**i * expansion
        for j in range(num_blocks):
            src, dst = f"layer{i + 1}.{j}", (f"layer{i + 1}_{j}",)
            for k in range(1, convs + 1):
                mapping.update(_conv(f"{src}.conv{k}", (*dst, f"conv{k}")))
                mapping.update(batch_norm(f"{src}.bn{k}", (*dst, f"bn{k}")))
            # Same rule as the model: a projection shortcut when the shape changes.
            stride = 2 if i > 0 and j == 0 else 1
            if stride != 1 or in_channels != out_channels:
                mapping.update(_conv(f"{src}.downsample.0", (*dst, "downsample_conv")))
                mapping.update(batch_norm(f"{src}.downsample.1", (*dst, "downsample_bn")))
            in_channels = out_channels
    if model.num_classes:
        mapping.update(linear("fc", ("fc",)))
    return mapping


# Model class -> the function mapping its torchvision state-dict keys.
_KEY_MAPS: dict[type, Callable[[Any], KeyMap]] = {
    ResNet: resnet_key_map,
}


def key_map(model: Any) -> KeyMap:
    """Maps every torchvision state-dict key of `model` to its Flax path and transform."""
    return _KEY_MAPS[type(model)](model)


def example_input(model: Any, torch_shapes: dict[str, Shape]) -> jax.ShapeDtypeStruct:
    """Parameter shapes of these CNNs do not depend on the image size (global or adaptive
    pooling before the classifier); 64x64 is the smallest size every family here accepts and
    keeps the abstract trace small."""
    del model, torch_shapes
    return jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
