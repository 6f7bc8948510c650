"""open_clip / OpenAI CLIP <-> jaxmm weight layout (`clip_vit_*`, `clip_test`).

Reference: open_clip's `open_clip/model.py` (`CLIP`) with `open_clip/transformer.py`
(`VisionTransformer`, `ResidualAttentionBlock`), checked against open_clip 3.3.0, e.g.
`open_clip.create_model('ViT-B-32', pretrained=None).state_dict()`. OpenAI's own checkpoints
(`ViT-B-32.pt`, TorchScript archives) hold the same keys plus three config scalars that
`jaxmm.convert.load_state_dict` drops. Layout facts this mapping relies on:

- Image tower, under `visual.`: `conv1` (no bias) OIHW <-> HWIO; `class_embedding` `[D]` is
  jaxmm's `cls_token` `[1, 1, D]`; `positional_embedding` `[1 + N, D]` is `pos_embed`
  `[1, 1 + N, D]`; `ln_pre`; `ln_post` (jaxmm `norm`: LayerNorm is per token, so normalising
  every token and taking the class token equals the reverse).
- Both towers' blocks `transformer.resblocks.{i}` hold `ln_1`, `attn` (torch
  `nn.MultiheadAttention`: fused `in_proj_weight` `[3D, D]` whose rows run (q/k/v, head,
  head_dim) exactly as timm's fused qkv, and `out_proj`), `ln_2`, `mlp.c_fc`, `mlp.c_proj`.
- Text tower at the top level: `token_embedding.weight` `[V, D]` and `positional_embedding`
  `[L, D]` copy through; `ln_final`.
- `visual.proj` and `text_projection` are bare `[width, embed]` matrices used as `x @ proj`:
  already Flax's `[in, out]` kernel layout, so NOT transposed like a `Linear`.
- `logit_scale` is a scalar; `logit_bias` exists only for SigLIP-style models
  (`init_logit_bias` set on both sides). Some checkpoints (SigLIP-style, some open_clip
  exports) store either as `[1]`: `from_torch` reads `[]` and `[1]`, `to_torch` writes `[]`,
  the layout of open_clip's own `nn.Parameter(torch.ones([]) * ...)`.
- The causal `attn_mask` is a non-persistent buffer in open_clip (absent from state dicts)
  and a plain attribute in OpenAI's code: jaxmm builds the mask in the forward pass, so no
  key maps to it and `to_torch` output loads into open_clip with `strict=True`.

The image tower is dispatched on its class through `_VISUAL_LAYOUTS`; a new tower kind
(e.g. OpenAI's ModifiedResNet) is one entry there.

Not covered: open_clip options jaxmm does not model (attentional pooler, `pool_type='avg'`,
LayerScale, custom attention blocks, timm or HF towers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxmm.convert import open_clip_resnet
from jaxmm.convert.layout import CONV, IDENTITY, KeyMap, Shape, Transform, layer_norm, linear
from jaxmm.convert.timm import OUT_KERNEL, QKV_BIAS, QKV_KERNEL, vit_example_input
from jaxmm.models.clip import CLIP
from jaxmm.models.modified_resnet import ModifiedResNet
from jaxmm.models.text import TextTransformer
from jaxmm.models.vit import VisionTransformer


def _add_leading_axes(count: int) -> Transform:
    """torch `[...]` <-> Flax `[1] * count + [...]` (CLIP stores embeddings without batch axes)."""
    return Transform(lambda a, shape: a.reshape(shape), lambda a: a.reshape(a.shape[count:]))


# `logit_scale`/`logit_bias`: Flax `[]` from torch `[]` or `[1]`; back to torch as `[]`.
_SCALAR = Transform(lambda a, shape: a.reshape(shape), lambda a: a, torch_aliases=((1,),))


def _resblocks(depth: int, src: str, dst: tuple[str, ...]) -> KeyMap:
    """`{src}.resblocks.{i}` of open_clip's `Transformer` <-> jaxmm's `Encoder` at `dst`."""
    mapping: KeyMap = {}
    for i in range(depth):
        block, path = f"{src}.resblocks.{i}", (*dst, f"block_{i}")
        attn = ("params", *path, "attn")
        mapping.update(layer_norm(f"{block}.ln_1", (*path, "ln_1")))
        mapping[f"{block}.attn.in_proj_weight"] = ((*attn, "qkv", "kernel"), QKV_KERNEL)
        mapping[f"{block}.attn.in_proj_bias"] = ((*attn, "qkv", "bias"), QKV_BIAS)
        mapping.update(linear(f"{block}.attn.out_proj", (*path, "attn", "out"), OUT_KERNEL))
        mapping.update(layer_norm(f"{block}.ln_2", (*path, "ln_2")))
        mapping.update(linear(f"{block}.mlp.c_fc", (*path, "mlp", "fc1")))
        mapping.update(linear(f"{block}.mlp.c_proj", (*path, "mlp", "fc2")))
    return mapping


def vit_tower_key_map(tower: VisionTransformer, prefix: str) -> KeyMap:
    """open_clip's `VisionTransformer` keys (each `prefix` + key) <-> a jaxmm ViT tower.

    Raises:
        ValueError: the tower is not in OpenAI's style (`CLIP_VIT_STYLE`).
    """
    openai_style = dict(stem="patch", pool="cls", patch_bias=False, pre_norm=True, num_classes=0)
    differing = {k: getattr(tower, k) for k, v in openai_style.items() if getattr(tower, k) != v}
    if differing:
        raise ValueError(f"open_clip's VisionTransformer needs {openai_style}; got {differing}")
    p, dst = prefix, ("image_tower",)
    return {
        f"{p}conv1.weight": (("params", *dst, "patch_embed", "kernel"), CONV),
        f"{p}class_embedding": (("params", *dst, "cls_token"), _add_leading_axes(2)),
        f"{p}positional_embedding": (("params", *dst, "pos_embed"), _add_leading_axes(1)),
        **layer_norm(f"{p}ln_pre", (*dst, "ln_pre")),
        **_resblocks(tower.depth, f"{p}transformer", (*dst, "encoder")),
        **layer_norm(f"{p}ln_post", (*dst, "norm")),
    }


def vit_tower_example_input(tower: VisionTransformer, torch_shapes: dict[str, Shape]):
    """An image size matching the tower's `positional_embedding` (keys without `visual.`)."""
    shape = torch_shapes.get("positional_embedding")
    return vit_example_input(tower, {"pos_embed": (1, *shape)} if shape else {})


# Image tower class -> (key map given the key prefix, example image given the tower's own
# PyTorch shapes, i.e. with the `visual.` prefix stripped).
_VISUAL_LAYOUTS: dict[type, tuple[Callable[[Any, str], KeyMap], Callable[..., Any]]] = {
    VisionTransformer: (vit_tower_key_map, vit_tower_example_input),
    ModifiedResNet: (open_clip_resnet.clip_tower_key_map, open_clip_resnet.example_input),
}
_VISUAL = "visual."


def key_map(model: CLIP) -> KeyMap:
    """Maps every open_clip CLIP state-dict key to its Flax path and transform.

    Args:
        model: a `jaxmm.models.clip.CLIP` (only its config is read).

    Raises:
        KeyError: no open_clip layout for the model's image tower class.
    """
    if type(model.text_tower) is not TextTransformer:
        raise KeyError(f"open_clip has no layout for text tower {type(model.text_tower).__name__}")
    visual_key_map, _ = _visual_layout(model)
    mapping = visual_key_map(model.image_tower, _VISUAL)
    if model.project_image:
        mapping[f"{_VISUAL}proj"] = (("params", "image_projection", "kernel"), IDENTITY)
    text = ("text_tower",)
    mapping.update(
        {
            "token_embedding.weight": (("params", *text, "token_embed"), IDENTITY),
            "positional_embedding": (("params", *text, "pos_embed"), IDENTITY),
            **_resblocks(model.text_tower.depth, "transformer", (*text, "encoder")),
            **layer_norm("ln_final", (*text, "ln_final")),
            "text_projection": (("params", "text_projection", "kernel"), IDENTITY),
            "logit_scale": (("params", "logit_scale"), _SCALAR),
        }
    )
    if model.init_logit_bias is not None:
        mapping["logit_bias"] = (("params", "logit_bias"), _SCALAR)
    return mapping


def example_input(model: CLIP, torch_shapes: dict[str, Shape]) -> tuple[jax.ShapeDtypeStruct, ...]:
    """`(images, tokens)` shapes for `jax.eval_shape(model.init, ...)` fitting the checkpoint."""
    _, visual_example = _visual_layout(model)
    visual_shapes = {
        key.removeprefix(_VISUAL): shape
        for key, shape in torch_shapes.items()
        if key.startswith(_VISUAL)
    }
    tokens = jax.ShapeDtypeStruct((1, model.text_tower.context_length), jnp.int32)
    return visual_example(model.image_tower, visual_shapes), tokens


def _visual_layout(model: CLIP):
    tower = type(model.image_tower)
    if tower not in _VISUAL_LAYOUTS:
        raise KeyError(
            f"open_clip has no layout for image tower {tower.__name__}; "
            f"supported: {', '.join(t.__name__ for t in _VISUAL_LAYOUTS)}"
        )
    return _VISUAL_LAYOUTS[tower]
