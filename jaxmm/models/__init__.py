"""The model registry: `create_model(name, **overrides)` and `list_models()`.

Each family file declares its variants as data (a table of field values); this
module turns every row into a registry entry. Overrides replace fields of the
module being built; CLIP and fusion entries also take `image_tower`/`text_tower`
(registry names) and `image`/`text` (dicts of overrides for the towers).

`create_model(name, pretrained=TAG)` also loads published weights (`jaxmm.weights`).
Linen modules hold no parameters, so it returns `(module, variables)` rather than a module
holding weights as timm's `create_model` does.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from flax import linen as nn

from jaxmm.models.alexnet import ALEXNET_VARIANTS, AlexNet
from jaxmm.models.captioner import CAPTIONER_VARIANTS, CaptionDecoder, Captioner
from jaxmm.models.clip import CLIP, CLIP_VARIANTS
from jaxmm.models.fusion import FUSION_VARIANTS, FusionClassifier
from jaxmm.models.mobilenet import (
    MOBILENET_V1_VARIANTS,
    MOBILENET_V2_VARIANTS,
    MOBILENET_V3_VARIANTS,
    MobileNetV1,
    MobileNetV2,
    MobileNetV3,
)
from jaxmm.models.modified_resnet import MODIFIED_RESNET_VARIANTS, ModifiedResNet
from jaxmm.models.resnet import RESNET_VARIANTS, ResNet
from jaxmm.models.swin import SWIN_VARIANTS, SwinTransformer
from jaxmm.models.text import TEXT_VARIANTS, TextTransformer
from jaxmm.models.vgg import VGG, VGG_VARIANTS
from jaxmm.models.vit import VIT_VARIANTS, VisionTransformer

_FAMILIES: dict[str, tuple[type[nn.Module], Mapping[str, dict[str, Any]]]] = {
    "vit": (VisionTransformer, VIT_VARIANTS),
    "text": (TextTransformer, TEXT_VARIANTS),
    "resnet": (ResNet, RESNET_VARIANTS),
    "mobilenet_v1": (MobileNetV1, MOBILENET_V1_VARIANTS),
    "mobilenet_v2": (MobileNetV2, MOBILENET_V2_VARIANTS),
    "mobilenet_v3": (MobileNetV3, MOBILENET_V3_VARIANTS),
    "alexnet": (AlexNet, ALEXNET_VARIANTS),
    "vgg": (VGG, VGG_VARIANTS),
    "swin": (SwinTransformer, SWIN_VARIANTS),
    "modified_resnet": (ModifiedResNet, MODIFIED_RESNET_VARIANTS),
}
_REGISTRY: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    name: (module, row) for module, table in _FAMILIES.values() for name, row in table.items()
}

# Fields every tower inherits from the CLIP model that holds it.
_SHARED_FIELDS = ("dtype", "param_dtype")


def list_models() -> list[str]:
    """All registered names, sorted."""
    return sorted([*_REGISTRY, *CLIP_VARIANTS, *FUSION_VARIANTS, *CAPTIONER_VARIANTS])


def _module_fields(module: type[nn.Module]) -> set[str]:
    return {f.name for f in fields(module) if f.name not in ("parent", "name")}


def _build(module: type[nn.Module], row: Mapping[str, Any], overrides: Mapping[str, Any], name):
    known = _module_fields(module)
    unknown = sorted(set(overrides) - known)
    if unknown:
        hints = [
            f"{key!r} (did you mean {close[0]!r}?)"
            if (close := difflib.get_close_matches(key, known, n=1))
            else repr(key)
            for key in unknown
        ]
        raise TypeError(
            f"{name}: unknown override(s) {', '.join(hints)}; "
            f"{module.__name__} has fields {sorted(known)}"
        )
    return module(**{**row, **overrides})


def _create_tower(clip_name: str, role: str, name: str, overrides: Mapping[str, Any]):
    """`create_model(name, **overrides)`, its errors saying which CLIP tower they are about."""
    try:
        return create_model(name, **overrides)
    except TypeError as e:
        raise TypeError(f"{clip_name} {role} tower (the {role!r} overrides): {e}") from None


def create_model(
    name: str, *, pretrained: str | None = None, **overrides: Any
) -> nn.Module | tuple[nn.Module, dict[str, Any]]:
    """Builds the registered model `name`, replacing fields with `overrides`.

    Args:
        name: a registry name (`list_models()`).
        pretrained: None for the module alone; a weights tag of `name`
            (`torchvision:IMAGENET1K_V2`, `openai`; `jaxmm.weights.list_pretrained(name)`),
            `NAME@TAG`, or a PyTorch checkpoint file, to also get its converted variables.
        **overrides: field values replacing the registry entry's.

    Returns:
        The module; with `pretrained`, `(module, variables)` for `module.apply(variables, ...)`
        (the file is downloaded and verified once, then read from the cache).

    Raises:
        KeyError: `name` is not registered (the message lists what is), or `pretrained` is
            an unknown tag (the message lists the model's).
        TypeError: an override names no field of the model.
    """
    if pretrained is not None:
        # Imported here: jaxmm.weights converts through jaxmm.convert, which imports this module.
        from jaxmm import weights

        model = create_model(name, **overrides)
        return model, weights.load(name, pretrained, **overrides)
    if name in CLIP_VARIANTS:
        return _create_clip(name, **overrides)
    if name in FUSION_VARIANTS:
        return _create_fusion(name, **overrides)
    if name in CAPTIONER_VARIANTS:
        return _create_captioner(name, **overrides)
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    module, row = _REGISTRY[name]
    return _build(module, row, overrides, name)


def _create_clip(
    name: str,
    *,
    image_tower: str | None = None,
    image: Mapping[str, Any] | None = None,
    text_tower: str | None = None,
    text: Mapping[str, Any] | None = None,
    **clip_overrides: Any,
) -> CLIP:
    variant = CLIP_VARIANTS[name]
    shared = {key: clip_overrides[key] for key in _SHARED_FIELDS if key in clip_overrides}
    image_name = image_tower or variant["image_tower"]
    # The variant's tower overrides (e.g. OpenAI's ViT style) apply unless the tower
    # itself was swapped for another registry entry.
    image_base = variant.get("image", {}) if image_tower is None else {}
    text_name = text_tower or variant["text_tower"]
    text_base = variant.get("text", {}) if text_tower is None else {}
    tower_image = _create_tower(
        name, "image", image_name, {**image_base, **(image or {}), **shared, "num_classes": 0}
    )
    tower_text = _create_tower(name, "text", text_name, {**text_base, **(text or {}), **shared})
    # A tower swapped in for one that ends in the embedding (ModifiedResNet) needs the projection.
    project_image = variant.get("project_image", True) or image_tower is not None
    clip_fields = {"embed_dim": variant["embed_dim"], "project_image": project_image}
    clip_fields.update(clip_overrides)
    return _build(
        CLIP, {}, {"image_tower": tower_image, "text_tower": tower_text, **clip_fields}, name
    )


def _create_fusion(
    name: str,
    *,
    image_tower: str | None = None,
    image: Mapping[str, Any] | None = None,
    text_tower: str | None = None,
    text: Mapping[str, Any] | None = None,
    **fusion_overrides: Any,
) -> FusionClassifier:
    """A `FusionClassifier` whose towers are built as `_create_clip` builds CLIP's (same
    names, overrides and parameter trees), returning tokens where the fusion attends to them."""
    variant = FUSION_VARIANTS[name]
    fusion_fields = {
        key: value
        for key, value in variant.items()
        if key not in ("image_tower", "image", "text_tower", "text")
    }
    fusion_fields.update(fusion_overrides)
    shared = {key: fusion_fields[key] for key in _SHARED_FIELDS if key in fusion_fields}
    tokens = {"output_tokens": fusion_fields["fusion"] == "xattn"}
    image_name = image_tower or variant["image_tower"]
    image_base = variant.get("image", {}) if image_tower is None else {}
    text_name = text_tower or variant["text_tower"]
    text_base = variant.get("text", {}) if text_tower is None else {}

    def tower(role: str, tower_name: str, tower_overrides: dict[str, Any]) -> nn.Module:
        # A tower without `output_tokens` (MobileNet, VGG) is built without it: for xattn,
        # FusionClassifier then says that it cannot give tokens.
        if tower_name in _REGISTRY and "output_tokens" in _module_fields(_REGISTRY[tower_name][0]):
            tower_overrides = {**tower_overrides, **tokens}
        return _create_tower(name, role, tower_name, tower_overrides)

    tower_image = tower(
        "image", image_name, {**image_base, **(image or {}), **shared, "num_classes": 0}
    )
    tower_text = tower("text", text_name, {**text_base, **(text or {}), **shared})
    try:
        return _build(
            FusionClassifier,
            {},
            {"image_tower": tower_image, "text_tower": tower_text, **fusion_fields},
            name,
        )
    except ValueError as e:
        raise ValueError(
            f"{name} (image tower {image_name!r}, text tower {text_name!r}): {e}"
        ) from None


def _create_captioner(
    name: str,
    *,
    image_tower: str | None = None,
    image: Mapping[str, Any] | None = None,
    decoder: Mapping[str, Any] | None = None,
    **captioner_overrides: Any,
) -> Captioner:
    """A `Captioner`: its image tower built as CLIP's (`image_tower`/`image` overrides, the
    same parameter tree) but returning tokens, and a decoder from the variant's fields
    updated by `decoder`."""
    variant = CAPTIONER_VARIANTS[name]
    shared = {key: captioner_overrides[key] for key in _SHARED_FIELDS if key in captioner_overrides}
    image_name = image_tower or variant["image_tower"]
    image_base = variant.get("image", {}) if image_tower is None else {}
    tower_overrides = {**image_base, **(image or {}), **shared}
    tower = _create_tower(
        name, "image", image_name, {**tower_overrides, "num_classes": 0, "output_tokens": True}
    )
    text = _build(CaptionDecoder, variant["decoder"], {**(decoder or {}), **shared}, name)
    return _build(
        Captioner, {}, {"image_tower": tower, "decoder": text, **captioner_overrides}, name
    )
