"""Checks a run's config against what the code knows, before any compute is spent.

`check_config(config)` raises one `ValueError` listing every problem it finds:

- Unknown keys. The schema is the base config of each task (`BASE_CONFIGS`: e.g.
  `configs/clip_small.py`, `configs/resnet18_shapes.py`): every field the trainer reads has a
  default in one of them.
  The run's own task's base comes first, the others fill in fields tasks share (an
  AdamW classifier takes `optim.b1` from the CLIP base). A typo such as `optim.lerning_rate`,
  or a field an older version had, would otherwise be ignored silently; each one is reported
  with the closest known key. The command line already refuses unknown keys; this catches
  them in config files.
- Wrong types: a value whose type differs from the base's (a string where an int belongs; an
  int is fine where a float belongs). Again the command line already enforces this.
- Free-form sections are checked by whoever reads them: `model` and `distill.teacher_model`
  by the model's own fields (`create_model`, which names the unknown field and the model),
  `data.builder_kwargs` by the user-data builder's options, `optim.lr_multipliers` by the
  parameter names (at state init).
- The model's input geometry: `data.image_size` must be a multiple of a ViT/Swin tower's
  `patch_size` and equal a tower's fixed `image_size` (CLIP's ModifiedResNet);
  `data.context_length` must fit the text tower's context.

The base configs live in the repository's `configs/` package; where it cannot be imported
(jaxmm installed on its own) the key and type checks are skipped with a warning.
"""

from __future__ import annotations

import difflib
import importlib
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

from absl import logging
from ml_collections import ConfigDict

from jaxmm.data import datasets
from jaxmm.models import create_model
from jaxmm.train import tasks

# The base config of each task in `tasks.TASKS`: together they are the schema of every config.
BASE_CONFIGS = {
    "contrastive": "configs.clip_small",
    "classification": "configs.resnet18_shapes",
    "vqa": "configs.vqa_xattn",
    "image_text_classification": "configs.image_text_shapes",
    "captioning": "configs.caption_small",
}
# Sections whose keys the base configs do not fix (each is checked elsewhere, see above).
FREE_FORM = frozenset(
    {"model", "data.builder_kwargs", "optim.lr_multipliers", "distill.teacher_model"}
)


def check_config(config: ConfigDict) -> None:
    """Raises `ValueError` naming every unknown key, mistyped value and bad model geometry.

    Args:
        config: the run's whole config (`train.py --config=...`).
    """
    task = config.get("task", "contrastive")
    if task not in tasks.TASKS:
        raise ValueError(f"task={task!r} is unknown{_did_you_mean(task, tasks.TASKS)}")
    problems = []
    schema = _schema(task)
    if schema is not None:
        problems += _compare(config, schema, prefix="", root=schema)
    problems += _builder_kwargs_problems(config.data)
    problems += _interval_problems(config)
    if problems:
        raise ValueError(
            f"{len(problems)} config problem(s) (the known keys and types are those of "
            f"{', '.join(BASE_CONFIGS.values())}):\n  " + "\n  ".join(problems)
        )
    _check_model(config)


def _schema(task: str) -> dict[str, Any] | None:
    """Every base config merged into one nested dict, `task`'s own values first."""
    modules = [BASE_CONFIGS[task]] + [m for t, m in sorted(BASE_CONFIGS.items()) if t != task]
    try:
        bases = [importlib.import_module(module).get_config() for module in modules]
    except ModuleNotFoundError as e:
        logging.warning("config keys and types not checked: no base configs (%s)", e)
        return None
    schema: dict[str, Any] = {}
    for base in bases:
        _merge_into(schema, base.to_dict())
    return schema


def _merge_into(schema: dict[str, Any], base: Mapping[str, Any]) -> None:
    """Adds `base`'s keys missing from `schema`, recursively (existing values win)."""
    for key, value in base.items():
        if key not in schema:
            schema[key] = value
        elif isinstance(schema[key], dict) and isinstance(value, Mapping):
            _merge_into(schema[key], value)


def _items(section: Any) -> Iterator[tuple[str, Any]]:
    return iter(section.items()) if isinstance(section, (Mapping, ConfigDict)) else iter(())


def _compare(
    section: Any, schema: Mapping[str, Any], prefix: str, root: Mapping[str, Any]
) -> list[str]:
    """Problems of `section` (the config or its section at `prefix`) against `schema` (the
    matching part of the whole schema `root`)."""
    problems = []
    for key, value in _items(section):
        path = prefix + key
        if key not in schema:
            hint = _did_you_mean(key, schema, prefix) or _elsewhere(key, root)
            problems.append(f"{path}: unknown key{hint}")
            continue
        expected = schema[key]
        is_section = isinstance(value, (Mapping, ConfigDict))
        if isinstance(expected, Mapping) != is_section:
            want = _kind(expected) if is_section else "a section (dict)"
            problems.append(f"{path}={_show(value)}: expected {want}, not {_kind(value)}")
        elif is_section and path not in FREE_FORM:
            problems += _compare(value, expected, path + ".", root)
        elif not is_section and not _same_kind(value, expected):
            problems.append(
                f"{path}={_show(value)}: expected {_kind(expected)} (like the default "
                f"{_show(expected)}), not {_kind(value)}"
            )
    return problems


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, numbers.Integral):
        return "an int"
    if isinstance(value, numbers.Real):
        return "a float"
    if isinstance(value, (tuple, list)):
        return "a tuple or list"
    if isinstance(value, (Mapping, ConfigDict)):
        return "a section (dict)"
    return "None" if value is None else f"a {type(value).__name__}"


def _same_kind(value: Any, expected: Any) -> bool:
    """Whether `value` may stand where the base config has `expected`."""
    if expected is None:
        return True  # the base leaves the type open
    if _kind(expected) == "a float":
        return _kind(value) in ("a float", "an int")  # as ml_collections accepts 1 for 1.0
    return _kind(value) == _kind(expected)


def _show(value: Any) -> str:
    """A one-line, bounded repr for messages."""
    text = repr(value.to_dict() if isinstance(value, ConfigDict) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _did_you_mean(key: str, known: Mapping[str, Any], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _elsewhere(key: str, schema: Mapping[str, Any], prefix: str = "") -> str:
    """' (did you mean a.b.key?)' when `key` is a known key in another section, else ''."""
    for name, value in schema.items():
        if name == key:
            return f" (did you mean {prefix}{name}?)"
        if isinstance(value, Mapping) and (hint := _elsewhere(key, value, f"{prefix}{name}.")):
            return hint
    return ""


# Step counts that divide the step number: 0 or less has no meaning there.
_POSITIVE_INTERVALS = ("total_steps", "log_every", "checkpoint_every")


def _interval_problems(config: ConfigDict) -> list[str]:
    return [
        f"{key}={config[key]!r}: must be a positive number of steps"
        for key in _POSITIVE_INTERVALS
        if isinstance(config.get(key), numbers.Integral) and config[key] < 1
    ]


def _builder_kwargs_problems(data: ConfigDict) -> list[str]:
    """Unknown options of a user-data builder (empty values are 'not set' and ignored)."""
    if data.get("name") not in datasets.USER_BUILDERS:
        return []  # tfds builders check their own arguments
    options = datasets.user_builder_options(data.name)
    return [
        f"data.builder_kwargs.{key}: not an option of data.name={data.name!r}"
        + (_did_you_mean(key, dict.fromkeys(options), "data.builder_kwargs.") or f" ({options})")
        for key, value in _items(data.get("builder_kwargs") or {})
        if value != "" and key not in options
    ]


def _check_model(config: ConfigDict) -> None:
    """Builds the model description (no parameters) and checks the input geometry against it."""
    name, overrides = tasks.model_overrides(config.model)
    try:
        model = create_model(name, **overrides)
    except (KeyError, TypeError) as e:
        raise ValueError(f"model (model.name={name!r}): {e.args[0]}") from None
    image_tower = getattr(model, "image_tower", model)
    where = "model.image." if image_tower is not model else "model."
    size = config.data.image_size
    patch = getattr(image_tower, "patch_size", None)
    if patch and size % patch:
        raise ValueError(
            f"data.image_size={size} is not divisible by the patch size {patch} of {name} "
            f"({where}patch_size): use an image size that is a multiple of {patch}"
        )
    fixed = getattr(image_tower, "image_size", None)
    if fixed and size != fixed:
        raise ValueError(
            f"data.image_size={size} but {name}'s image tower is built for {fixed} px "
            f"({where}image_size; its positional embedding fixes the size): set both alike"
        )
    text_tower = getattr(model, "text_tower", None)
    length = config.data.get("context_length")
    if text_tower is not None and length and length > text_tower.context_length:
        raise ValueError(
            f"data.context_length={length} exceeds the text tower's context "
            f"{text_tower.context_length} (model.text.context_length)"
        )
