"""Finds and prepares the tfds builder named by a config's `data` section.

`data.name` is one of jaxmm's own builders (the built-in `clip_shapes`, `vqa_shapes`,
`mm_shapes` and `longtail_shapes`, or the user-data builders `image_caption_file`,
`coco_caption_files`, `image_folder`, `vqa_file` and `image_text_label_file`, configured by
`data.builder_kwargs`), or the name of any tfds dataset the user has. Everything is prepared
as array_record so grain can read it without TensorFlow.
"""

from __future__ import annotations

import inspect
import os

import tensorflow_datasets as tfds
from ml_collections import ConfigDict

from jaxmm.data.image_folder import ImageFolder
from jaxmm.data.longtail_shapes import LongtailShapes
from jaxmm.data.mm_shapes import MmShapes
from jaxmm.data.shapes import ClipShapes
from jaxmm.data.user_captions import CocoCaptions, ImageCaptionFile
from jaxmm.data.user_image_text import ImageTextLabelFile
from jaxmm.data.user_vqa import VqaFile
from jaxmm.data.vqa_shapes import VqaShapes

# Builders whose files a user points at (`data.builder_kwargs`); they name their own
# configs after a fingerprint of those files.
USER_BUILDERS = {
    "image_caption_file": ImageCaptionFile,
    "coco_caption_files": CocoCaptions,
    "image_folder": ImageFolder,
    "vqa_file": VqaFile,
    "image_text_label_file": ImageTextLabelFile,
}
# Procedural datasets generated on first use; `data.builder_kwargs` override their knobs.
BUILT_IN = {
    "clip_shapes": ClipShapes,
    "vqa_shapes": VqaShapes,
    "mm_shapes": MmShapes,
    "longtail_shapes": LongtailShapes,
}


def get_builder(config: ConfigDict) -> tfds.core.DatasetBuilder:
    """The builder for `config` (the `data` section), not yet prepared."""
    # Empty strings stand for "not set" (ml_collections cannot override None), so configs can
    # carry e.g. `path=""` for users to fill in from the command line.
    kwargs = {k: v for k, v in (config.get("builder_kwargs") or {}).items() if v != ""}
    data_dir = config.get("data_dir") or None
    if config.name in USER_BUILDERS:
        return _user_builder(config.name, data_dir, kwargs)
    builder_config = config.get("builder_config") or None
    if config.name in BUILT_IN:
        return BUILT_IN[config.name](
            config=builder_config, data_dir=data_dir, file_format="array_record", **kwargs
        )
    return tfds.builder(
        config.name, config=builder_config, data_dir=data_dir, file_format="array_record", **kwargs
    )


def user_builder_options(name: str) -> list[str]:
    """The `data.builder_kwargs` keys the user-data builder `name` takes (`path` included)."""
    params = inspect.signature(USER_BUILDERS[name]).parameters
    # `path` stands for the first argument (root, annotations or path); data_dir has its own key.
    return sorted({"path", *params} - {"root", "annotations", "data_dir"})


def _user_builder(name: str, data_dir: str | None, kwargs: dict) -> tfds.core.DatasetBuilder:
    # Configs use one set of fields for every layout: `path` is the caption file, the COCO
    # folder or JSON, or the image folder.
    if "path" not in kwargs:
        what = {
            "image_folder": "image folder",
            "vqa_file": "question file",
            "image_text_label_file": "image-text-label file",
        }.get(name, "caption file")
        raise ValueError(f"data.builder_kwargs.path must name the {what} for {name!r}")
    # A mapping written in a config file (COCO's `{split: file}`) arrives as a ConfigDict,
    # which is not a `Mapping`; the builders take plain dicts.
    kwargs = {k: v.to_dict() if isinstance(v, ConfigDict) else v for k, v in kwargs.items()}
    if name == "image_folder":
        kwargs["root"] = kwargs.pop("path")
    if name == "coco_caption_files":
        kwargs["annotations"] = kwargs.pop("path")
        coco_folder = isinstance(kwargs["annotations"], str) and os.path.isdir(
            os.path.expanduser(kwargs["annotations"])
        )
        if not coco_folder and "image_root" not in kwargs:
            raise ValueError(
                "coco_caption_files needs data.builder_kwargs.image_root, the folder of the "
                "images of data.builder_kwargs.path (or set path to COCO's folder, the one "
                "holding annotations/, train2017/ and val2017/)"
            )
    return USER_BUILDERS[name](data_dir=data_dir, **kwargs)


def prepare_builder(config: ConfigDict) -> tfds.core.DatasetBuilder:
    """`get_builder`, then generates the dataset if it is not on disk yet."""
    builder = get_builder(config)
    builder.download_and_prepare()
    return builder


def require_splits(builder: tfds.core.DatasetBuilder, *splits: str) -> None:
    """Opens each of `splits` once, so a split the dataset lacks fails before training rather
    than at the final evaluation; the error names the dataset and where it lives."""
    for split in splits:
        try:
            builder.as_data_source(split)
        except ValueError as error:  # tfds: "Unknown split ..."; user builders: an empty split
            raise ValueError(f"dataset {builder.name!r} at {builder.data_dir}: {error}") from error
