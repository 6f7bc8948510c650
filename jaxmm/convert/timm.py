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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange

from jaxmm.convert.layout import CONV, IDENTITY, KeyMap, Shape, Transform, layer_norm, linear
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


# Model class -> (its key map, the example input for its abstract init).
_LAYOUTS: dict[type, tuple[Callable[[Any], KeyMap], Callable[..., jax.ShapeDtypeStruct]]] = {
    VisionTransformer: (vit_key_map, vit_example_input),
}


def key_map(model: Any) -> KeyMap:
    """Maps every timm state-dict key of `model` to its Flax path and transform."""
    return _LAYOUTS[type(model)][0](model)


def example_input(model: Any, torch_shapes: dict[str, Shape]) -> jax.ShapeDtypeStruct:
    """An NHWC input shape for `jax.eval_shape(model.init, ...)` fitting the checkpoint."""
    return _LAYOUTS[type(model)][1](model, torch_shapes)
