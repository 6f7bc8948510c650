"""Save a grid of augmented training images: `python -m jaxmm.data.show`.

    python -m jaxmm.data.show --config=configs/vit_b16_imagenet.py --out=grid.png
    python -m jaxmm.data.show --config=configs/resnet18_shapes.py --out=grid.png --num=32 \\
        --config.data.randaugment=rand-m9-mstd0.5 --config.data.mixup_alpha=0.8

The images come out of the training pipeline with the config's data section, seed and
augmentation, MixUp/CutMix included for classification configs, in batches of `--num`
(rounded up to even, as mixing pairs examples): the views a run would train on, though
not its very first ones, whose batches are `batch_size` long. The normalisation is undone
for display (random erasing's noise is clipped to the visible range); small images are
enlarged by an integer factor, without smoothing, so that each pixel stays visible.
"""

from __future__ import annotations

import math
import os
import pathlib
from functools import partial
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import ConfigDict, config_flags  # noqa: E402
from PIL import Image  # noqa: E402

from jaxmm import cli  # noqa: E402
from jaxmm.data import augment, datasets, pipeline  # noqa: E402

MIN_TILE = 96  # pixels: images smaller than this are enlarged by an integer factor
GAP = 2  # pixels of white between tiles


def image_example(
    example: dict[str, Any], rng: np.random.Generator, *, config: ConfigDict
) -> dict[str, np.ndarray]:
    """The training view of an example's image alone (the tasks' example functions draw
    the image first, so it is the view they would make)."""
    return {"image": pipeline.augment_image(example["image"], rng, config)}


def training_images(config: ConfigDict, num: int) -> np.ndarray:
    """The first `num` training views, uint8 `[num, S, S, 3]`, normalisation undone."""
    if num < 1:
        raise ValueError(f"--num must be at least 1, got {num}")
    data = config.data
    augment.check(data)  # a bad setting fails before the dataset is read
    source = datasets.prepare_builder(data).as_data_source(data.get("train_split", "train"))
    if config.get("task", "contrastive") == "classification":
        example_fn = partial(pipeline.image_label_example, config=data)
    else:
        example_fn = partial(image_example, config=data)
    batch_size = num + num % 2
    iterator = pipeline.train_iterator(
        source, example_fn, data, batch_size=batch_size, seed=config.seed
    )
    images = next(iterator)["image"][:num]
    pixels = images * np.asarray(data.std, np.float32) + np.asarray(data.mean, np.float32)
    return np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)


def grid(images: np.ndarray) -> np.ndarray:
    """uint8 `[N, S, S, 3]` -> one uint8 image: a near-square grid, white gaps, tiles of at
    least `MIN_TILE` pixels (nearest-neighbour enlargement)."""
    num, size = images.shape[:2]
    scale = max(1, math.ceil(MIN_TILE / size))
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    tile = size * scale
    columns = math.ceil(math.sqrt(num))
    rows = math.ceil(num / columns)
    canvas = np.full((rows * (tile + GAP) + GAP, columns * (tile + GAP) + GAP, 3), 255, np.uint8)
    for index, image in enumerate(images):
        top = GAP + (index // columns) * (tile + GAP)
        left = GAP + (index % columns) * (tile + GAP)
        canvas[top : top + tile, left : left + tile] = image
    return canvas


def save_grid(config: ConfigDict, out: str | pathlib.Path, num: int = 16) -> pathlib.Path:
    """Writes the grid of `num` training views of `config` to the PNG file `out`."""
    out = pathlib.Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out={str(out)!r} must name a .png file")
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid(training_images(config, num))).save(out)
    return out


def define_flags() -> None:
    """The command's flags; defined only when it runs, so that importing this module (tests)
    never clashes with another command's `--config` in absl's global flag registry."""
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_string("out", None, "The PNG file to write.")
    flags.DEFINE_integer("num", 16, "How many augmented images to show.")
    flags.mark_flags_as_required(["config", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    out = save_grid(flags.FLAGS.config, flags.FLAGS.out, flags.FLAGS.num)
    print(f"wrote {flags.FLAGS.num} augmented training images to {out}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
