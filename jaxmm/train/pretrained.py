"""Starting a run from pretrained weights: `config.init_from`.

Three sources are understood:
- a published checkpoint by name: a weights tag of the run's model (`torchvision:IMAGENET1K_V2`,
  `openai`) or `MODEL@TAG` (`jaxmm.weights`), downloaded into the cache once and converted;
  a registered tag wins over a file or folder of the same name (write `./openai` for that);
- a PyTorch checkpoint (`.pth`/`.pt`/`.bin`/`.safetensors`) of a model `jaxmm.convert`
  knows (torchvision, timm), converted on the fly;
- a jaxmm run (its workdir, its `checkpoints` folder, or one step's folder): the newest
  orbax checkpoint's parameters and model state (optimizer state is not carried over).

Tasks built on another model's parts (a fusion model or a captioner on a CLIP's towers) name
them in `pretrained_subtrees`: from a checkpoint of another model (a CLIP run, a CLIP weights
tag) only those subtrees are loaded, and must fit exactly; the rest starts fresh. A
checkpoint of the run's own model loads whole.

When the run's classifier differs from the checkpoint's (another class count), the head is
left at its fresh initialisation and everything else must match exactly: a missing,
unexpected or mis-shaped body parameter is an error naming the file, never a silent
partial load. The one exception is a ViT's position embedding trained at another image size:
its grid is resampled to the run's (`jaxmm.models.positions.resample_position_embedding`).
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import linen as nn
from flax import traverse_util
from flax.core import meta

from jaxmm import convert, sharding, weights
from jaxmm.models import create_model
from jaxmm.models.positions import resample_position_embedding
from jaxmm.models.scan import match_layout
from jaxmm.train.checkpoint import restore_variables

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
Path = tuple[str, ...]


def head_paths(task: Any) -> set[Path]:
    """Flat variable paths of the task model's classifier: those a `num_classes=0` model lacks.

    Empty for models without `num_classes` (CLIP).
    """
    if "num_classes" not in getattr(task, "model_overrides", {}):
        return set()
    headless = create_model(task.model_name, **{**task.model_overrides, "num_classes": 0})
    rng, inputs = jax.random.PRNGKey(0), task.init_inputs()
    full = _shapes(jax.eval_shape(task.model.init, rng, *inputs))
    body = _shapes(jax.eval_shape(headless.init, rng, *inputs))
    return set(full) - set(body)


def _shapes(variables: Any) -> dict[Path, tuple[int, ...]]:
    flat = traverse_util.flatten_dict(nn.unbox(dict(variables)))
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _from_torch(state_dict: dict[str, Any], task: Any, path: Any) -> dict[str, Any]:
    """Converts a PyTorch state dict read from `path` (a file, or a weights tag); with another
    class count, everything but its head."""
    overrides = dict(task.model_overrides)
    try:
        return convert.from_torch(task.model_name, state_dict, **overrides)
    except ValueError as full_error:
        if "num_classes" not in overrides:
            raise ValueError(f"{path}: {full_error}") from None
        head = convert.head_keys(task.model_name, **overrides)
        body = {key: value for key, value in state_dict.items() if key not in head}
        try:
            return convert.from_torch(task.model_name, body, **{**overrides, "num_classes": 0})
        except ValueError as body_error:
            raise ValueError(f"{path}: {body_error}") from None


def _from_orbax(path: pathlib.Path) -> dict[str, Any]:
    """The params and model state of the newest checkpoint under a jaxmm run folder, on this
    machine's devices whatever the run's were."""
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "model": 1})
    for directory in (path / "checkpoints", path):
        try:
            variables, step = restore_variables(directory, mesh)
        except FileNotFoundError:  # not a checkpoints folder, or none complete in it
            continue
        logging.info("init_from: %s step %d", directory, step)
        return variables
    # A single step's folder (`checkpoints/<step>`) holds the `state` item directly.
    if (path / "state").is_dir():
        restored = ocp.StandardCheckpointer().restore((path / "state").absolute())
        return {"params": restored["params"], **restored.get("model_state", {})}
    raise FileNotFoundError(f"init_from: no jaxmm checkpoint found under {path}")


def merge_pretrained(
    init: Any, loaded: Any, head: set[Path], source: str, field: str = "init_from"
) -> dict[str, Any]:
    """`init` with every variable replaced by `loaded`'s, except head variables whose shape
    differs or that `loaded` lacks. Errors name `source` as the config's `field`.

    Raises:
        ValueError: body variables missing from, unexpected in or mis-shaped in `loaded`.
    """
    flat_init = traverse_util.flatten_dict(nn.unbox(dict(init)))
    flat_loaded = _resampled_image_positions(flat_init, traverse_util.flatten_dict(dict(loaded)))
    missing = [p for p in flat_init if p not in flat_loaded and p not in head]
    unexpected = [p for p in flat_loaded if p not in flat_init and p not in head]
    misshaped = [
        f"{'/'.join(p)}: run {tuple(flat_init[p].shape)}, checkpoint {tuple(flat_loaded[p].shape)}"
        for p in flat_init
        if p in flat_loaded and p not in head and flat_init[p].shape != flat_loaded[p].shape
    ]
    if missing or unexpected or misshaped:
        lines = [f"{field} {source} does not fit the model:"]
        for title, items in (
            ("missing", ["/".join(p) for p in missing]),
            ("unexpected", ["/".join(p) for p in unexpected]),
            ("mis-shaped", misshaped),
        ):
            if items:
                lines += [f"  {title} ({len(items)}):"] + [f"    {item}" for item in items[:20]]
        raise ValueError("\n".join(lines))
    merged, fresh = {}, []
    for path, value in flat_init.items():
        if path in flat_loaded and flat_loaded[path].shape == value.shape:
            merged[path] = np.asarray(flat_loaded[path], dtype=value.dtype)
        else:
            merged[path] = value
            fresh.append("/".join(path))
    if fresh:
        logging.info("init_from %s: new classifier head %s", source, fresh)
    return traverse_util.unflatten_dict(merged)


def _resampled_image_positions(
    flat_init: dict[Path, Any], flat_loaded: dict[Path, Any]
) -> dict[Path, Any]:
    """`flat_loaded` with each ViT position embedding whose token count differs from the
    run's resampled to the run's grid (a tower trained at another image size). Text
    positions are never resampled: a different context length stays an error."""
    resampled = dict(flat_loaded)
    for path, value in flat_init.items():
        old = flat_loaded.get(path)
        if (
            path[-1] != "pos_embed"
            or any(key.startswith("text") for key in path)
            or old is None
            or old.shape == value.shape
            or (old.shape[0], old.shape[2]) != (value.shape[0], value.shape[2])
        ):
            continue
        try:
            resampled[path] = resample_position_embedding(jnp.asarray(old), value.shape[1])
        except ValueError:
            continue  # no square grids: reported as mis-shaped
        logging.info(
            "init_from: %s resampled from %d to %d tokens",
            "/".join(path),
            old.shape[1],
            value.shape[1],
        )
    return resampled


def load_variables(init_from: str, task: Any) -> dict[str, Any]:
    """The variables stored at `init_from`, as they are (without a head the run's classifier
    cannot use): WiSE-FT's zero-shot model, and what `load_pretrained` merges.

    Args:
        init_from: a weights tag of the run's model or `MODEL@TAG`, a PyTorch checkpoint file,
            or a jaxmm run/checkpoint folder.
        task: the run's task (`jaxmm.train.tasks`): its model, registry name and overrides;
            None loads a jaxmm run folder as saved.
    """
    model_name = None if task is None else task.model_name  # a run folder needs no task
    if pretrained_subtrees(task):
        # Towers of another model: `clip_vit_b32@openai` for a fusion model's towers.
        entry = weights.resolve(init_from)
        if entry is not None and entry.model != model_name:
            return weights.load(entry.model, entry.tag)
    entry = weights.resolve(init_from, model_name)
    if entry is not None:
        return _from_torch(weights.load_state_dict(entry), task, entry.spec)
    path = pathlib.Path(init_from).expanduser()
    if not path.exists():
        tags = ", ".join(s.split("@", 1)[1] for s in weights.list_pretrained(model_name))
        raise FileNotFoundError(
            f"init_from: {path} does not exist"
            + (f" (weights tags of {model_name}: {tags})" if model_name and tags else "")
        )
    if path.suffix in TORCH_SUFFIXES:
        return _from_torch(convert.load_state_dict(path), task, path)
    if path.is_dir():
        variables = _from_orbax(path)
        if task is None:
            return variables
        # A run saved with the other `scan_layers` setting: stacked or per-layer as this one.
        # Boxes are stripped without `nn.unbox`, which would constrain them to the active mesh.
        model_shapes = jax.eval_shape(task.model.init, jax.random.PRNGKey(0), *task.init_inputs())
        return match_layout(variables, meta.map_axis_meta(lambda box: box.value, model_shapes))
    raise ValueError(
        f"init_from: {path} is neither a PyTorch checkpoint ({', '.join(TORCH_SUFFIXES)}) "
        "nor a jaxmm run folder"
    )


def pretrained_subtrees(task: Any) -> tuple[str, ...]:
    """The top-level parameter groups a task takes from another model's weights (a fusion
    model's `image_tower` and `text_tower` from a CLIP); empty for tasks that load whole
    models only."""
    return tuple(getattr(task, "pretrained_subtrees", ()))


def merge_subtrees(
    init: Any, loaded: Any, subtrees: tuple[str, ...], source: str
) -> dict[str, Any]:
    """`init` with the `subtrees` of every collection (`params`, BatchNorm statistics)
    replaced by `loaded`'s, which must fit them exactly; the rest of `init` stays fresh."""
    init = nn.unbox(dict(init))
    absent = [name for name in subtrees if name not in init.get("params", {})]
    if absent:
        raise ValueError(f"the run's model has no {', '.join(absent)} to load from {source}")
    merged = {}
    for collection, values in init.items():
        values = dict(values)
        for name in subtrees:
            if name not in values:
                continue  # a tower without this collection (no BatchNorm in a ViT)
            if name not in loaded.get(collection, {}):
                raise ValueError(f"init_from {source} has no {collection}/{name} for the run")
            part = merge_pretrained(
                {name: values[name]}, {name: loaded[collection][name]}, set(), source
            )
            values[name] = part[name]
        merged[collection] = values
    logging.info("init_from %s: loaded %s; the rest starts fresh", source, ", ".join(subtrees))
    return merged


def _holds_whole_model(init: Any, loaded: Any) -> bool:
    """Whether `loaded` has every parameter of `init` (a checkpoint of the run's own model)."""
    params = traverse_util.flatten_dict(nn.unbox(dict(init)).get("params", {}))
    return set(params) <= set(traverse_util.flatten_dict(dict(loaded.get("params", {}))))


def load_pretrained(init_from: str, task: Any, init_variables: Any) -> dict[str, Any]:
    """The run's initial variables: `init_variables` overwritten from `init_from`.

    Args:
        init_from: as `load_variables`.
        task: the run's task (`jaxmm.train.tasks`): its model, registry name and overrides.
        init_variables: the freshly initialised variables (they provide shapes, dtypes and
            the new head).
    """
    loaded = load_variables(init_from, task)
    subtrees = pretrained_subtrees(task)
    entry = weights.resolve(init_from, None if subtrees else task.model_name)
    source = entry.spec if entry is not None else str(pathlib.Path(init_from).expanduser())
    # A checkpoint of the run's own model (to resume or evaluate) loads whole; another
    # model's (a CLIP's) lends only its towers.
    if subtrees:
        if _holds_whole_model(init_variables, loaded):
            return merge_pretrained(init_variables, loaded, set(), source)
        return merge_subtrees(init_variables, loaded, subtrees, source)
    return merge_pretrained(init_variables, loaded, head_paths(task), source)
