"""open_clip <-> jaxmm weight layout of OpenAI's ModifiedResNet (`modified_resnet*`, `clip_rn*`).

Reference: open_clip's `open_clip/modified_resnet.py` (`ModifiedResNet`, open_clip 3.3.0); in a
CLIP state dict every key below carries the `visual.` prefix. Layout facts this mapping relies on:

- Stem `conv1`..`conv3` (3x3, no bias) with `bn1`..`bn3`; block `j` of stage `i` is
  `layer{i}.{j}` (jaxmm `layer{i}_{j}`) with `conv1/bn1/conv2/bn2/conv3/bn3`; the shortcut
  Sequential is `downsample.-1` (AvgPool2d, no weights), `downsample.0` (1x1 conv) and
  `downsample.1` (BN) (jaxmm `downsample_conv`, `downsample_bn`).
- `attnpool.positional_embedding` `[HW + 1, C]` copies through; `attnpool.{q,k,v,c}_proj` are
  separate `Linear`s (open_clip concatenates the biases only when it calls
  `F.multi_head_attention_forward`), transposed like any Linear.
- Conv weights OIHW <-> HWIO; BatchNorm as in `jaxmm.convert.torchvision`.
- open_clip has no classifier: a jaxmm `head` (`num_classes > 0`) maps to `head.weight`/`.bias`
  so fine-tuned towers round-trip, but no open_clip model loads those keys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmm.convert.layout import CONV, IDENTITY, KeyMap, Shape, batch_norm, linear
from jaxmm.models.modified_resnet import ModifiedResNet


def key_map(model: ModifiedResNet) -> KeyMap:
    """Maps every key of open_clip's `ModifiedResNet` state dict to its Flax path and transform.

    Args:
        model: a `jaxmm.models.modified_resnet.ModifiedResNet` (only its config is read).
    """

    def conv_bn(src: str, conv: str, bn: str, dst: tuple[str, ...], flax_conv: str, flax_bn: str):
        return {
            f"{src}{conv}.weight": (("params", *dst, flax_conv, "kernel"), CONV),
            **batch_norm(f"{src}{bn}", (*dst, flax_bn)),
        }

    mapping: KeyMap = {}
    for k in (1, 2, 3):
        mapping.update(conv_bn("", f"conv{k}", f"bn{k}", (), f"conv{k}", f"bn{k}"))
    for i, num_blocks in enumerate(model.stage_sizes):
        for j in range(num_blocks):
            src, dst = f"layer{i + 1}.{j}.", (f"layer{i + 1}_{j}",)
            for k in (1, 2, 3):
                mapping.update(conv_bn(src, f"conv{k}", f"bn{k}", dst, f"conv{k}", f"bn{k}"))
            if j == 0:  # the first block of a stage changes the width (x4 in stage 1) or stride
                mapping.update(
                    conv_bn(
                        src, "downsample.0", "downsample.1", dst, "downsample_conv", "downsample_bn"
                    )
                )
    mapping["attnpool.positional_embedding"] = (
        ("params", "attnpool", "positional_embedding"),
        IDENTITY,
    )
    for proj in ("q_proj", "k_proj", "v_proj", "c_proj"):
        mapping.update(linear(f"attnpool.{proj}", ("attnpool", proj)))
    if model.num_classes:
        mapping.update(linear("head", ("head",)))
    return mapping


def example_input(model: ModifiedResNet, torch_shapes: dict[str, Shape]) -> jax.ShapeDtypeStruct:
    """The tower's own `image_size`: it fixes the positional embedding's length."""
    del torch_shapes
    return jax.ShapeDtypeStruct((1, model.image_size, model.image_size, 3), jnp.float32)


def clip_tower_key_map(tower: ModifiedResNet, prefix: str) -> KeyMap:
    """The tower inside open_clip's `CLIP`: keys under `prefix` (`'visual.'`), Flax paths under
    the jaxmm CLIP's `image_tower` (for `jaxmm.convert.open_clip`'s `_VISUAL_LAYOUTS`)."""
    return {
        prefix + key: ((collection, "image_tower", *path), transform)
        for key, ((collection, *path), transform) in key_map(tower).items()
    }
