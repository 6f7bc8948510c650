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

## MobileNet v2 (`mobilenet_v2*`) and v3 (`mobilenet_v3_*`)

References: torchvision's `torchvision/models/mobilenetv2.py` and `mobilenetv3.py`. Both keep
the body in one `features` Sequential that jaxmm mirrors as `features_0` .. `features_{n + 1}`
(stem, blocks, 1x1 head conv); which layers a block holds follows from
`model.block_configs()`, the same list the model builds from:

- `Conv2dNormActivation` is `.0` conv (no bias) and `.1` BatchNorm (jaxmm `ConvBN`: `conv`,
  `bn`); depthwise weights `[C, 1, k, k]` convert like any conv to `[k, k, 1, C]`.
- v2 block `features.{i}.conv`: [`0` expand], dw, then the projection as a *bare* `Conv2d`
  and `BatchNorm2d` (two indices, not a nested `Conv2dNormActivation`).
- v3 block `features.{i}.block`: [expand], dw, [`SqueezeExcitation` with bias-ful 1x1 convs
  `fc1`/`fc2`], project (a `Conv2dNormActivation` without activation).
- Heads: v2 `classifier.1` (`.0` is Dropout); v3 `classifier.0` (jaxmm `pre_logits`, kept by
  `num_classes=0`) and `classifier.3` (`.1` Hardswish, `.2` Dropout).

## AlexNet (`alexnet`) and VGG (`vgg*`, `vgg*_bn`)

References: torchvision's `torchvision/models/alexnet.py` (`AlexNet`) and
`torchvision/models/vgg.py` (`VGG`, `make_layers`). Both are two `nn.Sequential`s, so keys
carry layer indices that count the parameter-free ReLU, Dropout and MaxPool modules too:

- AlexNet `features`: conv1..conv5 at indices 0, 3, 6, 8, 10 (jaxmm `conv1`..`conv5`).
- VGG `features` (`make_layers`): per conv `Conv2d`, [`BatchNorm2d`], `ReLU`, and one
  `MaxPool2d` closing each stage; jaxmm names conv j of stage i `conv{i}_{j}` and its
  BatchNorm `bn{i}_{j}`. Every conv has a bias, also in the `_bn` variants.
- `classifier`: fc6, fc7, fc8 at indices 1, 4, 6 (AlexNet: Dropout comes first) or 0, 3, 6
  (VGG) (jaxmm `classifier/fc6` .. `classifier/fc8`); `num_classes=0` has no fc8.
- fc6's input is flattened from NCHW `[B, C, 6 or 7, ...]` in (C, H, W) order; the jaxmm
  models flatten their NHWC maps in that same order, so fc6 is transposed like any Linear.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxmm.convert.layout import CONV, KeyMap, Shape, batch_norm, linear
from jaxmm.models.alexnet import AlexNet
from jaxmm.models.mobilenet import BlockConfig, MobileNetV2, MobileNetV3
from jaxmm.models.resnet import ResNet
from jaxmm.models.vgg import VGG


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


def _classifier(num_classes: int, fc6: int, fc7: int, fc8: int) -> KeyMap:
    """fc6, fc7 and (unless headless) fc8, given their indices in torchvision's `classifier`."""
    mapping = {
        **linear(f"classifier.{fc6}", ("classifier", "fc6")),
        **linear(f"classifier.{fc7}", ("classifier", "fc7")),
    }
    if num_classes:
        mapping.update(linear(f"classifier.{fc8}", ("classifier", "fc8")))
    return mapping


def alexnet_key_map(model: AlexNet) -> KeyMap:
    """Maps every torchvision AlexNet state-dict key to its Flax path and transform.

    Args:
        model: a `jaxmm.models.alexnet.AlexNet` (only its config is read).
    """
    mapping: KeyMap = {}
    for i, index in enumerate((0, 3, 6, 8, 10)):  # a ReLU after each conv, pools after 1, 2, 5
        # A conv with bias: weight and bias like a Linear's, the weight laid out as a conv.
        mapping.update(linear(f"features.{index}", (f"conv{i + 1}",), kernel=CONV))
    return {**mapping, **_classifier(model.num_classes, fc6=1, fc7=4, fc8=6)}


def vgg_key_map(model: VGG) -> KeyMap:
    """Maps every torchvision VGG state-dict key to its Flax path and transform.

    Args:
        model: a `jaxmm.models.vgg.VGG` (only its config is read).
    """
    mapping: KeyMap = {}
    index = 0  # position in torchvision's `features`, following `make_layers`
    for i, stage in enumerate(model.stages, start=1):
        for j in range(1, len(stage) + 1):
            mapping.update(linear(f"features.{index}", (f"conv{i}_{j}",), kernel=CONV))
            if model.batch_norm:
                mapping.update(batch_norm(f"features.{index + 1}", (f"bn{i}_{j}",)))
            index += 3 if model.batch_norm else 2  # conv, [BatchNorm], ReLU
        index += 1  # the stage's MaxPool2d
    return {**mapping, **_classifier(model.num_classes, fc6=0, fc7=3, fc8=6)}


def _conv_bn(torch_prefix: str, flax_path: tuple[str, ...]) -> KeyMap:
    """`Conv2dNormActivation` (`.0` conv, `.1` BatchNorm) <-> jaxmm's `ConvBN`."""
    return {
        **_conv(f"{torch_prefix}.0", (*flax_path, "conv")),
        **batch_norm(f"{torch_prefix}.1", (*flax_path, "bn")),
    }


def _mobilenet_features(
    configs: list[BlockConfig], block_key_map: Callable[[str, str, BlockConfig], KeyMap]
) -> KeyMap:
    """Stem `features.0`, blocks `features.1..n` (by `block_key_map`), head conv `features.n+1`."""
    mapping = _conv_bn("features.0", ("features_0",))
    for i, config in enumerate(configs, start=1):
        mapping.update(block_key_map(f"features.{i}", f"features_{i}", config))
    last = len(configs) + 1
    return {**mapping, **_conv_bn(f"features.{last}", (f"features_{last}",))}


def _mobilenet_v2_block(src: str, dst: str, config: BlockConfig) -> KeyMap:
    layers = ["expand", "dw"] if config.has_expand else ["dw"]
    mapping: KeyMap = {}
    for k, name in enumerate(layers):
        mapping.update(_conv_bn(f"{src}.conv.{k}", (dst, name)))
    # The projection: a bare Conv2d and BatchNorm2d at the next two indices.
    k = len(layers)
    mapping.update(_conv(f"{src}.conv.{k}", (dst, "project", "conv")))
    return {**mapping, **batch_norm(f"{src}.conv.{k + 1}", (dst, "project", "bn"))}


def _mobilenet_v3_block(src: str, dst: str, config: BlockConfig) -> KeyMap:
    layers = [
        *(["expand"] if config.has_expand else []),
        "dw",
        *(["se"] if config.use_se else []),
        "project",
    ]
    mapping: KeyMap = {}
    for k, name in enumerate(layers):
        if name == "se":  # 1x1 convs with bias: weight and bias like a Linear's, laid out as a conv
            for fc in ("fc1", "fc2"):
                mapping.update(linear(f"{src}.block.{k}.{fc}", (dst, "se", fc), kernel=CONV))
        else:
            mapping.update(_conv_bn(f"{src}.block.{k}", (dst, name)))
    return mapping


def mobilenet_v2_key_map(model: MobileNetV2) -> KeyMap:
    """Maps every torchvision MobileNetV2 state-dict key to its Flax path and transform.

    Args:
        model: a `jaxmm.models.mobilenet.MobileNetV2` (only its config is read).
    """
    mapping = _mobilenet_features(model.block_configs(), _mobilenet_v2_block)
    if model.num_classes:
        mapping.update(linear("classifier.1", ("classifier",)))
    return mapping


def mobilenet_v3_key_map(model: MobileNetV3) -> KeyMap:
    """Maps every torchvision MobileNetV3 state-dict key to its Flax path and transform.

    Args:
        model: a `jaxmm.models.mobilenet.MobileNetV3` (only its config is read).
    """
    mapping = _mobilenet_features(model.block_configs(), _mobilenet_v3_block)
    mapping.update(linear("classifier.0", ("pre_logits",)))
    if model.num_classes:
        mapping.update(linear("classifier.3", ("classifier",)))
    return mapping


# Model class -> the function mapping its torchvision state-dict keys.
_KEY_MAPS: dict[type, Callable[[Any], KeyMap]] = {
    ResNet: resnet_key_map,
    AlexNet: alexnet_key_map,
    VGG: vgg_key_map,
    MobileNetV2: mobilenet_v2_key_map,
    MobileNetV3: mobilenet_v3_key_map,
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
