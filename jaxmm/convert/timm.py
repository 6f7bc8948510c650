"""timm <-> jaxmm weight layouts: one key map per model family, picked by model class.

## Vision Transformer (`vit_*`)

Reference: timm's `timm/models/vision_transformer.py` (`VisionTransformer`, checked against
timm 1.0.31). Layout facts this mapping relies on:

- `patch_embed.proj` is a `Conv2d` with bias, weight OIHW `[D, 3, P, P]`; Flax's `nn.Conv`
  kernel is HWIO `[P, P, 3, D]`.
- `cls_token` `[1, 1, D]` is concatenated first and `pos_embed` `[1, 1 + N, D]` is added
  after, which is also jaxmm's order, so both copy through unchanged.
- `blocks.{i}.attn.qkv` is one fused `Linear(D, 3D)` whose output features are ordered
  `(qkv, head, head_dim)`; jaxmm keeps the same product as an N-D kernel `[D, 3, H, Dh]`
  (bias `[3, H, Dh]`), so the conversion is a reshape plus moving the input axis first.
- `blocks.{i}.attn.proj` is `Linear(D, D)` over the concatenated heads; jaxmm's `out` kernel is
  `[H, Dh, D]`, the transposed weight with its input axis split into heads.
- PyTorch `Linear` stores `[out, in]`, Flax `Dense` `[in, out]`: transposed.
- LayerNorm `weight` is Flax's `scale`; eps 1e-6 on both sides (the model's default).
- With `global_pool='avg'` timm replaces `norm` by `Identity` and normalises after pooling with
  `fc_norm`; jaxmm's `pool='gap'` always normalises the pooled vector with `norm`, so `norm`
  maps to `fc_norm` there. With the class token, normalising every token and then taking the
  first (timm) equals taking the first and then normalising (jaxmm): LayerNorm is per token.
- `pre_norm=True` (timm's `norm_pre`) maps to jaxmm's `ln_pre`; `num_classes=0` has no head.

Not covered: timm options jaxmm does not model (register tokens, `no_embed_class`, LayerScale,
q/k norm, `global_pool='map'`) and jaxmm's convolutional stem, which timm has no weights for.

## Swin Transformer (`swin_*`)

Reference: timm's `timm/models/swin_transformer.py` (`SwinTransformer`, timm 1.0.31), e.g.
`swin_tiny_patch4_window7_224`. Layout facts this mapping relies on:

- `patch_embed.proj` (conv with bias) and `patch_embed.norm` (jaxmm: `patch_embed`,
  `patch_embed_norm`); the final `norm`; the classifier is `head.fc` (jaxmm: `head`).
- `layers.{i}.blocks.{j}` (jaxmm: `layers_{i}_blocks_{j}`) hold `norm1`, `attn.qkv`,
  `attn.proj`, `attn.relative_position_bias_table` `[(2W - 1)^2, heads]` (copied as is),
  `norm2`, `mlp.fc1`, `mlp.fc2`; `qkv`/`proj` convert exactly as ViT's.
- timm 1.x downsamples at the *start* of stages 1..: `layers.{i}.downsample.norm` and the
  bias-free `layers.{i}.downsample.reduction` (jaxmm: `layers_{i}_downsample`). Original
  Microsoft checkpoints put it at the end of stage i - 1; timm's `checkpoint_filter_fn`
  renames those keys, so load them through timm first.
- `relative_position_index` and `attn_mask` are non-persistent buffers, absent from the state
  dict; jaxmm recomputes both from the input size.
- A bias table has fewer than `(2W - 1)^2` rows where timm's `img_size` made a stage smaller
  than the window; `swin_example_input` picks an image size that reproduces those shapes
  (square images only).

## MobileNet v1 (`mobilenet_v1*`)

Reference: timm's `mobilenetv1_100`, an `EfficientNet` (`timm/models/efficientnet.py`) built
by `_gen_mobilenet_v1` from `dsa` blocks (`DepthwiseSeparableConv` with an activation after the
pointwise conv and no shortcut). Layout facts this mapping relies on:

- Stem `conv_stem` + `bn1` (jaxmm `stem/conv`, `stem/bn`); block `j` of stage `i` is
  `blocks.{i}.{j}` (jaxmm `blocks_{i}_{j}`) with `conv_dw`/`bn1` (jaxmm `dw`) and
  `conv_pw`/`bn2` (jaxmm `pw`); timm's `BatchNormAct2d` holds the same keys as `BatchNorm2d`.
- No head conv: `conv_head`/`bn2` are `Identity` unless `head_conv=True` (`mobilenetv1_100h`,
  not modelled here); the classifier is `classifier`.
- timm's default `pad_type=''` pads symmetrically, `((s - 1) + (k - 1)) // 2` = 1 for every
  3x3 conv at stride 1 or 2, as jaxmm does; only `tf_` variants pad TF-'same' style.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange

from jaxmm.convert.layout import (
    CONV,
    IDENTITY,
    LINEAR,
    KeyMap,
    Shape,
    Transform,
    batch_norm,
    layer_norm,
    linear,
)
from jaxmm.models.mobilenet import MobileNetV1
from jaxmm.models.swin import SwinTransformer
from jaxmm.models.vit import VisionTransformer

# Fused qkv weight [3 H Dh, D] <-> kernel [D, 3, H, Dh]; timm's output features run (qkv, h, d).
QKV_KERNEL = Transform(
    lambda a, shape: rearrange(a, "(three h d) e -> e three h d", three=3, h=shape[2]),
    lambda a: rearrange(a, "e three h d -> (three h d) e"),
)
# Fused qkv bias [3 H Dh] <-> [3, H, Dh].
QKV_BIAS = Transform(
    lambda a, shape: rearrange(a, "(three h d) -> three h d", three=3, h=shape[1]),
    lambda a: rearrange(a, "three h d -> (three h d)"),
)
# Output projection weight [D, H Dh] <-> kernel [H, Dh, D].
OUT_KERNEL = Transform(
    lambda a, shape: rearrange(a, "e (h d) -> h d e", h=shape[0]),
    lambda a: rearrange(a, "h d e -> e (h d)"),
)


def vit_key_map(model: VisionTransformer) -> KeyMap:
    """Maps every timm ViT state-dict key to its Flax path and transform.

    Args:
        model: a `jaxmm.models.vit.VisionTransformer` (only its config is read).

    Raises:
        ValueError: the model uses a part timm's `VisionTransformer` lacks.
    """
    if model.stem != "patch":
        raise ValueError(f"timm has no weights for stem={model.stem!r}")
    mapping: KeyMap = {"patch_embed.proj.weight": (("params", "patch_embed", "kernel"), CONV)}
    if model.patch_bias:
        mapping["patch_embed.proj.bias"] = (("params", "patch_embed", "bias"), IDENTITY)
    if model.pool == "cls":
        mapping["cls_token"] = (("params", "cls_token"), IDENTITY)
    mapping["pos_embed"] = (("params", "pos_embed"), IDENTITY)
    if model.pre_norm:
        mapping.update(layer_norm("norm_pre", ("ln_pre",)))
    for i in range(model.depth):
        src, dst = f"blocks.{i}", ("encoder", f"block_{i}")
        mapping.update(layer_norm(f"{src}.norm1", (*dst, "ln_1")))
        mapping[f"{src}.attn.qkv.weight"] = (("params", *dst, "attn", "qkv", "kernel"), QKV_KERNEL)
        mapping[f"{src}.attn.qkv.bias"] = (("params", *dst, "attn", "qkv", "bias"), QKV_BIAS)
        mapping.update(linear(f"{src}.attn.proj", (*dst, "attn", "out"), OUT_KERNEL))
        mapping.update(layer_norm(f"{src}.norm2", (*dst, "ln_2")))
        mapping.update(linear(f"{src}.mlp.fc1", (*dst, "mlp", "fc1")))
        mapping.update(linear(f"{src}.mlp.fc2", (*dst, "mlp", "fc2")))
    # timm's global_pool='avg' swaps `norm` for `fc_norm` after pooling (see module docstring).
    mapping.update(layer_norm("norm" if model.pool == "cls" else "fc_norm", ("norm",)))
    if model.num_classes:
        mapping.update(linear("head", ("head",)))
    return mapping


def vit_example_input(model: VisionTransformer, torch_shapes: dict[str, Shape]):
    """An NHWC image shape whose token count matches the checkpoint's `pos_embed`.

    The positional embedding's length is the only parameter shape that depends on the image
    size, so it is read from the checkpoint (square grids only); 224 when it is absent.
    """
    size = 224
    if "pos_embed" in torch_shapes and len(torch_shapes["pos_embed"]) == 3:
        num_patches = torch_shapes["pos_embed"][1] - (1 if model.pool == "cls" else 0)
        grid = round(max(num_patches, 0) ** 0.5)
        if grid * grid == num_patches and grid > 0:
            size = grid * model.patch_size
    return jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)


def swin_key_map(model: SwinTransformer) -> KeyMap:
    """Maps every timm Swin state-dict key to its Flax path and transform.

    Args:
        model: a `jaxmm.models.swin.SwinTransformer` (only its config is read).
    """
    mapping: KeyMap = {
        "patch_embed.proj.weight": (("params", "patch_embed", "kernel"), CONV),
        "patch_embed.proj.bias": (("params", "patch_embed", "bias"), IDENTITY),
        **layer_norm("patch_embed.norm", ("patch_embed_norm",)),
    }
    for i, depth in enumerate(model.depths):
        if i > 0:
            src, dst = f"layers.{i}.downsample", f"layers_{i}_downsample"
            mapping.update(layer_norm(f"{src}.norm", (dst, "norm")))
            mapping[f"{src}.reduction.weight"] = (("params", dst, "reduction", "kernel"), LINEAR)
        for j in range(depth):
            src, dst = f"layers.{i}.blocks.{j}", f"layers_{i}_blocks_{j}"
            attn, table = ("params", dst, "attn"), "relative_position_bias_table"
            mapping.update(layer_norm(f"{src}.norm1", (dst, "norm1")))
            mapping[f"{src}.attn.qkv.weight"] = ((*attn, "qkv", "kernel"), QKV_KERNEL)
            mapping[f"{src}.attn.qkv.bias"] = ((*attn, "qkv", "bias"), QKV_BIAS)
            mapping.update(linear(f"{src}.attn.proj", (dst, "attn", "proj"), OUT_KERNEL))
            mapping[f"{src}.attn.{table}"] = ((*attn, table), IDENTITY)
            mapping.update(layer_norm(f"{src}.norm2", (dst, "norm2")))
            mapping.update(linear(f"{src}.mlp.fc1", (dst, "mlp", "fc1")))
            mapping.update(linear(f"{src}.mlp.fc2", (dst, "mlp", "fc2")))
    mapping.update(layer_norm("norm", ("norm",)))
    if model.num_classes:
        mapping.update(linear("head.fc", ("head",)))
    return mapping


def swin_example_input(model: SwinTransformer, torch_shapes: dict[str, Shape]):
    """A square NHWC image shape whose bias tables match the checkpoint's.

    A table has `(2w - 1)^2` rows for the window `w` its stage used: the full window, or the
    stage's side where that was smaller (timm built at a small `img_size`). If stage `k` is
    the first with a shrunk window `w_k`, an image of `patch * w_k * 2^k` gives stage `k` that
    side, all later stages the same sides as the checkpoint (they follow from it) and all
    earlier ones at least the full window. Without one, `patch * window * 2^(stages - 1)`: the
    smallest size where every stage keeps its full window (224 for Swin-T).
    """
    side = model.window_size * 2 ** (len(model.depths) - 1)
    for k in range(len(model.depths)):
        shape = torch_shapes.get(f"layers.{k}.blocks.0.attn.relative_position_bias_table", ())
        if len(shape) != 2:
            continue  # absent or malformed: the shape check reports it
        span = round(shape[0] ** 0.5)  # 2w - 1
        if span * span == shape[0] and 0 < (span + 1) // 2 < model.window_size:
            side = (span + 1) // 2 * 2**k
            break
    size = side * model.patch_size
    return jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)


def mobilenet_v1_key_map(model: MobileNetV1) -> KeyMap:
    """Maps every timm MobileNet v1 state-dict key to its Flax path and transform.

    Args:
        model: a `jaxmm.models.mobilenet.MobileNetV1` (only its config is read).
    """
    mapping: KeyMap = {
        "conv_stem.weight": (("params", "stem", "conv", "kernel"), CONV),
        **batch_norm("bn1", ("stem", "bn")),
    }
    for i, (_, num_blocks, _) in enumerate(model.stages):
        for j in range(num_blocks):
            src, dst = f"blocks.{i}.{j}", f"blocks_{i}_{j}"
            for conv, norm, name in (("conv_dw", "bn1", "dw"), ("conv_pw", "bn2", "pw")):
                mapping[f"{src}.{conv}.weight"] = (("params", dst, name, "conv", "kernel"), CONV)
                mapping.update(batch_norm(f"{src}.{norm}", (dst, name, "bn")))
    if model.num_classes:
        mapping.update(linear("classifier", ("classifier",)))
    return mapping


def mobilenet_v1_example_input(model: MobileNetV1, torch_shapes: dict[str, Shape]):
    """Any image size: no parameter shape depends on it (the pool before the head is global)."""
    del model, torch_shapes
    return jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)


# Model class -> (its key map, the example input for its abstract init).
_LAYOUTS: dict[type, tuple[Callable[[Any], KeyMap], Callable[..., jax.ShapeDtypeStruct]]] = {
    VisionTransformer: (vit_key_map, vit_example_input),
    SwinTransformer: (swin_key_map, swin_example_input),
    MobileNetV1: (mobilenet_v1_key_map, mobilenet_v1_example_input),
}


def key_map(model: Any) -> KeyMap:
    """Maps every timm state-dict key of `model` to its Flax path and transform."""
    return _LAYOUTS[type(model)][0](model)


def example_input(model: Any, torch_shapes: dict[str, Shape]) -> jax.ShapeDtypeStruct:
    """An NHWC input shape for `jax.eval_shape(model.init, ...)` fitting the checkpoint."""
    return _LAYOUTS[type(model)][1](model, torch_shapes)
