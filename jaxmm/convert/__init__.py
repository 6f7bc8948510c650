"""PyTorch <-> Flax weight conversion: `from_torch`, `to_torch` and `load_state_dict`.

Each source layout lives in its own module (`timm.py` for ViT, `torchvision.py` for ResNet;
shared transforms in `layout.py`) and exposes `key_map(model)`: PyTorch key -> (Flax variable
path, `Transform`), the path starting with its collection (`'params'` or `'batch_stats'`), plus
`example_input(model, torch_shapes)`: an input shape for `jax.eval_shape(model.init, ...)`.
This module does the generic part: it derives the expected shapes on both sides from the
Flax model itself (no hand-written shape tables to drift), checks a checkpoint against them
and reports every missing, unexpected and mis-shaped key at once, then converts.

Torch is imported only inside functions, so jaxmm runs without it; state dicts may hold
torch tensors or numpy arrays.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from flax import traverse_util

from jaxmm.convert import open_clip, open_clip_resnet, timm, torchvision
from jaxmm.models import create_model
from jaxmm.models import scan as scan_layout
from jaxmm.models.alexnet import ALEXNET_VARIANTS
from jaxmm.models.mobilenet import (
    MOBILENET_V1_VARIANTS,
    MOBILENET_V2_VARIANTS,
    MOBILENET_V3_VARIANTS,
)
from jaxmm.models.modified_resnet import MODIFIED_RESNET_VARIANTS
from jaxmm.models.resnet import RESNET_VARIANTS
from jaxmm.models.swin import SWIN_VARIANTS
from jaxmm.models.vgg import VGG_VARIANTS
from jaxmm.models.vit import VIT_VARIANTS

# Registry name -> the module holding its PyTorch layout (the canonical source of each family).
_CONVERTERS: dict[str, ModuleType] = {
    **{name: timm for name in VIT_VARIANTS},
    **{name: torchvision for name in RESNET_VARIANTS},
    **{name: torchvision for name in ALEXNET_VARIANTS},
    **{name: torchvision for name in VGG_VARIANTS},
    **{name: timm for name in SWIN_VARIANTS},
    **{name: timm for name in MOBILENET_V1_VARIANTS},
    **{name: torchvision for name in MOBILENET_V2_VARIANTS},
    **{name: torchvision for name in MOBILENET_V3_VARIANTS},
    **{name: open_clip_resnet for name in MODIFIED_RESNET_VARIANTS},
    **{name: open_clip for name in ("clip_vit_b32", "clip_vit_b16", "clip_vit_l14", "clip_test")},
    **{name: open_clip for name in ("clip_rn50", "clip_rn101", "clip_rn_test")},
}
# torch's BatchNorm step counter: Flax has none, so `from_torch` drops it and `to_torch`
# writes 0 next to every `running_mean` (strict `load_state_dict` wants the key).
_COUNTER = "num_batches_tracked"
# The Flax collections a PyTorch state dict maps to: parameters and BatchNorm running stats.
_COLLECTIONS = ("params", "batch_stats")


def _converter(name: str) -> ModuleType:
    if name not in _CONVERTERS:
        raise KeyError(
            f"no PyTorch conversion for {name!r}; supported: {', '.join(sorted(_CONVERTERS))}"
        )
    return _CONVERTERS[name]


def _to_numpy(value: Any) -> np.ndarray:
    """A float32 numpy copy of a torch tensor, jax array or numpy array."""
    if hasattr(value, "detach"):  # a torch tensor; `.float()` because numpy has no bfloat16
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        value = value.numpy()
    return np.asarray(value, dtype=np.float32)


def _flax_shapes(
    model: nn.Module, example: jax.ShapeDtypeStruct | tuple[jax.ShapeDtypeStruct, ...]
) -> dict[tuple[str, ...], tuple]:
    """Flat Flax variable path `(collection, ...)` -> shape, from an abstract `init`.

    `example` is the input, or a tuple of inputs for models taking several (CLIP's images and
    tokens). `jax.eval_shape` traces without FLOPs or memory.
    """
    examples = example if isinstance(example, tuple) else (example,)
    inputs = [jax.numpy.zeros(e.shape, e.dtype) for e in examples]
    abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), *inputs)))
    return {
        path: tuple(leaf.shape)
        for path, leaf in traverse_util.flatten_dict(dict(abstract)).items()
        if path[0] in _COLLECTIONS
    }


def _check_key_map(name: str, mapping: Mapping[str, Any], flax_shapes: Mapping) -> None:
    # A converter that misses a parameter would silently leave it untrained; fail loudly.
    mapped = {path for path, _ in mapping.values()}
    if mapped != set(flax_shapes):
        raise RuntimeError(
            f"{name}: converter key map out of sync with the model; unmapped Flax parameters "
            f"{sorted('/'.join(p) for p in set(flax_shapes) - mapped)}, mapped to nothing "
            f"{sorted('/'.join(p) for p in mapped - set(flax_shapes))}"
        )


def _mismatch_error(
    what: str, expected: Mapping[str, tuple], given: Mapping[str, tuple]
) -> ValueError | None:
    """A `ValueError` listing missing, unexpected and mis-shaped keys, or None when all match."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    misshaped = sorted(
        f"{key}: expected {expected[key]}, got {given[key]}"
        for key in set(expected) & set(given)
        if tuple(expected[key]) != tuple(given[key])
    )
    if not (missing or unexpected or misshaped):
        return None
    lines = [f"{what} does not match the model:"]
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("mis-shaped keys", misshaped),
    ):
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {item}" for item in items)
    lines.append("  (pass model overrides such as num_classes=... if the checkpoint differs)")
    return ValueError("\n".join(lines))


def from_torch(name: str, state_dict: Mapping[str, Any], **model_overrides: Any) -> dict:
    """Converts a PyTorch state dict to Flax variables for the registry model `name`.

    Args:
        name: a registry name, e.g. `'vit_b16'`.
        state_dict: PyTorch key -> torch tensor or numpy array (e.g. `model.state_dict()`).
        **model_overrides: forwarded to `create_model`, for checkpoints whose config differs
            from the registry entry (e.g. `num_classes=10`).

    Returns:
        `{'params': ..., 'batch_stats': ...}` (only the collections the model has) of nested
        dicts of float32 numpy arrays, usable with `model.apply`. BatchNorm's
        `num_batches_tracked` is dropped: Flax keeps no step counter.

    Raises:
        ValueError: keys are missing, unexpected or mis-shaped (all listed at once).
        KeyError: `name` has no converter.
    """
    if scan_layout.without_scan(model_overrides) != model_overrides:
        # PyTorch speaks the per-layer layout: convert to it, then stack the scanned stacks.
        layers = from_torch(name, state_dict, **scan_layout.without_scan(model_overrides))
        model = create_model(name, **model_overrides)
        given = {key: np.shape(value) for key, value in state_dict.items()}
        shapes = _flax_shapes(model, _converter(name).example_input(model, given))
        return scan_layout.match_layout(layers, traverse_util.unflatten_dict(shapes))
    converter = _converter(name)
    model = create_model(name, **model_overrides)
    arrays = {
        key: _to_numpy(value)
        for key, value in state_dict.items()
        # BatchNorm's step counter has no Flax counterpart.
        if not key.endswith(_COUNTER)
    }
    given = {key: array.shape for key, array in arrays.items()}
    mapping = converter.key_map(model)
    flax_shapes = _flax_shapes(model, converter.example_input(model, given))
    _check_key_map(name, mapping, flax_shapes)
    expected = {
        key: jax.eval_shape(
            transform.to_torch, jax.ShapeDtypeStruct(flax_shapes[path], np.float32)
        ).shape
        for key, (path, transform) in mapping.items()
    }
    # A tensor stored in another layout its transform reads (`torch_aliases`) matches too.
    given = {
        key: expected[key] if key in mapping and shape in mapping[key][1].torch_aliases else shape
        for key, shape in given.items()
    }
    error = _mismatch_error(f"state dict for {name}", expected, given)
    if error is not None:
        raise error
    variables = {
        # A fresh C-ordered copy: `Tensor.numpy()` shares memory with the torch parameter.
        path: np.array(transform.to_flax(arrays[key], flax_shapes[path]), order="C")
        for key, (path, transform) in mapping.items()
    }
    return traverse_util.unflatten_dict(variables)


def to_torch(name: str, variables: Mapping[str, Any], **model_overrides: Any) -> dict:
    """Converts Flax variables of the registry model `name` to a PyTorch state dict.

    Args:
        name: a registry name, e.g. `'vit_b16'`.
        variables: `{'params': ...}` plus `'batch_stats'` for models with BatchNorm, as returned
            by `model.init` (boxed or not) or `from_torch`; other collections are ignored.
        **model_overrides: forwarded to `create_model`, as in `from_torch`.

    Returns:
        PyTorch key -> float32 numpy array; `torch.from_numpy` each value (or pass the dict to
        `load_state_dict` after wrapping) to load it into the reference model. BatchNorm layers
        also get `num_batches_tracked` = 0 (int64), which Flax does not track, so a
        `from_torch` -> `to_torch` round trip is exact except for those counters.

    Raises:
        ValueError: parameters are missing, unexpected or mis-shaped (all listed at once).
    """
    if scan_layout.without_scan(model_overrides) != model_overrides:
        layers = {c: scan_layout.unstack_layers(v) for c, v in nn.unbox(variables).items()}
        return to_torch(name, layers, **scan_layout.without_scan(model_overrides))
    converter = _converter(name)
    model = create_model(name, **model_overrides)
    variables = nn.unbox(variables)
    if "params" not in variables:
        raise ValueError(f"expected variables with a 'params' collection, got {list(variables)}")
    arrays = {
        path: _to_numpy(leaf)
        for path, leaf in traverse_util.flatten_dict(
            {c: dict(variables[c]) for c in _COLLECTIONS if c in variables}
        ).items()
    }
    mapping = converter.key_map(model)
    # The example input depends on PyTorch-side shapes (pos_embed); derive them from what was
    # given, skipping entries too malformed to transform (the check below reports those).
    given_torch = {}
    for key, (path, transform) in mapping.items():
        if path in arrays:
            try:
                given_torch[key] = transform.to_torch(arrays[path]).shape
            except Exception:  # any malformed shape is reported by the check below
                pass
    flax_shapes = _flax_shapes(model, converter.example_input(model, given_torch))
    _check_key_map(name, mapping, flax_shapes)
    error = _mismatch_error(
        f"variables for {name}",
        {"/".join(path): shape for path, shape in flax_shapes.items()},
        {"/".join(path): array.shape for path, array in arrays.items()},
    )
    if error is not None:
        raise error
    state_dict = {}
    for key, (path, transform) in mapping.items():
        # A fresh, writable C-ordered copy: `torch.from_numpy` rejects read-only jax buffers.
        state_dict[key] = np.array(transform.to_torch(arrays[path]), order="C")
        if key.endswith(".running_mean"):
            state_dict[key.removesuffix("running_mean") + _COUNTER] = np.array(0, np.int64)
    return state_dict


def head_keys(name: str, **model_overrides: Any) -> set[str]:
    """The PyTorch keys of `name`'s final classifier: those a headless model does not have.

    Fine-tuning on another label set drops exactly these from a checkpoint.
    """
    converter = _converter(name)
    full = converter.key_map(create_model(name, **{**model_overrides, "num_classes": 1}))
    headless = converter.key_map(create_model(name, **{**model_overrides, "num_classes": 0}))
    return set(full) - set(headless)


def load_state_dict(path: str | pathlib.Path) -> dict[str, Any]:
    """Reads a PyTorch checkpoint: `.pth`/`.pt`/`.bin` (torch) or `.safetensors`.

    Torch checkpoints are loaded with `weights_only=True` onto the CPU; a top-level
    `state_dict` or `model` entry (training checkpoints) is unwrapped. TorchScript archives
    (OpenAI's CLIP releases) are read through `torch.jit.load`. As in open_clip's loader, a
    `module.` prefix on every key (saved from `DistributedDataParallel`) is removed.

    Raises:
        ImportError: the package the format needs (torch or safetensors) is not installed.
        ValueError: the file extension is not recognised.
    """
    path = pathlib.Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError as err:
            raise ImportError(
                f"reading {path.name} needs the 'safetensors' package: pip install safetensors"
            ) from err
        return _strip_module_prefix(load_file(str(path)))
    if path.suffix in (".pth", ".pt", ".bin"):
        try:
            import torch
        except ImportError as err:
            raise ImportError(
                f"reading {path.name} needs the 'torch' package: pip install 'jaxmm[parity]'"
            ) from err
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except RuntimeError as err:
            if "TorchScript" not in str(err):
                raise
            # A TorchScript state dict also lists non-persistent buffers (open_clip's causal
            # `attn_mask`, rebuilt by the model) and OpenAI's archives add config scalars that
            # no parameter matches (open_clip's loader drops those too).
            derived = ("attn_mask", "input_resolution", "context_length", "vocab_size")
            checkpoint = {
                key: value
                for key, value in torch.jit.load(path, map_location="cpu").state_dict().items()
                if key.rsplit(".", 1)[-1] not in derived
            }
        for wrapper in ("state_dict", "model"):
            if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(wrapper), Mapping):
                checkpoint = checkpoint[wrapper]
                break
        return _strip_module_prefix(checkpoint)
    raise ValueError(f"unknown checkpoint format {path.suffix!r}; use .pth, .pt or .safetensors")


def _strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    prefix = "module."
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key.removeprefix(prefix): value for key, value in state_dict.items()}
    return dict(state_dict)
