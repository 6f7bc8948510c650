"""Finds and prepares the tfds builder named by a config's `data` section.

`data.name` is one of jaxmm's own builders (the built-in `clip_shapes`, or the
user-data builders `image_caption_file` and `coco_caption_files`, configured by
`data.builder_kwargs`), or the name of any tfds dataset the user has. Everything
is prepared as array_record so grain can read it without TensorFlow.
"""

from __future__ import annotations

import tensorflow_datasets as tfds
from ml_collections import ConfigDict

from jaxmm.data.shapes import ClipShapes
from jaxmm.data.user_captions import CocoCaptionFiles, ImageCaptionFile

BUILDERS = {
    "clip_shapes": ClipShapes,
    "image_caption_file": ImageCaptionFile,
    "coco_caption_files": CocoCaptionFiles,
}


def get_builder(config: ConfigDict) -> tfds.core.DatasetBuilder:
    """The builder for `config` (the `data` section), not yet prepared."""
    kwargs = dict(config.get("builder_kwargs") or {})
    common = dict(data_dir=config.get("data_dir") or None, file_format="array_record")
    if config.get("builder_config"):
        common["config"] = config.builder_config
    if config.name in BUILDERS:
        return BUILDERS[config.name](**common, **kwargs)
    return tfds.builder(config.name, **common, **kwargs)


def prepare_builder(config: ConfigDict) -> tfds.core.DatasetBuilder:
    """`get_builder`, then generates the dataset if it is not on disk yet."""
    builder = get_builder(config)
    builder.download_and_prepare()
    return builder
