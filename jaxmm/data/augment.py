"""The per-example training augmentations beyond crop and flip, read from `config.data`.

`pipeline.augment_image` runs: crop -> flip -> ColorJitter -> RandAugment -> normalise ->
random erasing. Every step here is off by default and draws from the example's generator
only when it is on, after the crop and flip draws, so a config without these fields trains
on exactly the images it did before. The fields (defaults in `DEFAULTS`):

- `crop_padding`: > 0 replaces the random-resized crop by the CIFAR recipe: resize the
  whole image to `image_size`, pad that many black pixels, crop `image_size` at random.
- `color_jitter`: strengths (brightness, contrast, saturation, hue), torchvision's
  `ColorJitter` (`jaxmm.data.color_jitter`); `color_jitter_random_order` as torchvision.
- `randaugment`: a timm spec such as "rand-m9-mstd0.5" ("" = off; `jaxmm.data.randaugment`).
- `erase_prob`, `erase_mode`: random erasing (`jaxmm.data.erasing`), on the normalised image.

timm's transforms factory drops ColorJitter when RandAugment is on; here both run if both
are set, so a recipe sets only the one it wants.
"""

from __future__ import annotations

import functools

import numpy as np
from ml_collections import ConfigDict

from jaxmm.data import color_jitter, erasing, image_ops, randaugment

DEFAULTS = {
    "crop_padding": 0,
    "color_jitter": (0.0, 0.0, 0.0, 0.0),
    "color_jitter_random_order": False,
    "randaugment": "",
    "erase_prob": 0.0,
    "erase_mode": "pixel",
}


def setting(config: ConfigDict, name: str):
    """`config.data`'s value of augmentation field `name`, its default when absent."""
    return config.get(name, DEFAULTS[name])


# Parsed once per spec string, not once per example.
parse_randaugment = functools.lru_cache(maxsize=8)(randaugment.parse)


def check(config: ConfigDict) -> None:
    """A one-line `ValueError` for any bad augmentation field of the `data` section."""
    if setting(config, "crop_padding") < 0:
        raise ValueError(f"data.crop_padding must be >= 0, got {config.crop_padding}")
    color_jitter.check_strengths(tuple(setting(config, "color_jitter")))
    if spec := setting(config, "randaugment"):
        parse_randaugment(spec)
    erasing.check(setting(config, "erase_prob"), setting(config, "erase_mode"))


def crop(image: np.ndarray, rng: np.random.Generator, config: ConfigDict) -> np.ndarray:
    """uint8 `[H, W, 3]` -> `[S, S, 3]`: random-resized crop, or padded random crop."""
    size, padding = config.image_size, setting(config, "crop_padding")
    if padding:
        whole = image_ops.crop_resize(image, (0, 0, image.shape[1], image.shape[0]), size)
        box = image_ops.random_crop_box(rng, size + 2 * padding, size + 2 * padding, size)
        left, top, right, bottom = box
        return image_ops.pad(whole, padding)[top:bottom, left:right]
    box = image_ops.random_resized_crop_box(
        rng, image.shape[0], image.shape[1], tuple(config.crop_scale), tuple(config.crop_ratio)
    )
    return image_ops.crop_resize(image, box, size)


def photometric(image: np.ndarray, rng: np.random.Generator, config: ConfigDict) -> np.ndarray:
    """uint8 `[S, S, 3]` through ColorJitter and RandAugment, each when configured."""
    strengths = tuple(setting(config, "color_jitter"))
    if any(strengths):
        image = color_jitter.color_jitter(
            image, rng, strengths, setting(config, "color_jitter_random_order")
        )
    if spec := setting(config, "randaugment"):
        fill = randaugment.fill_colour(config.mean)
        image = randaugment.rand_augment(image, rng, parse_randaugment(spec), fill)
    return image


def erase(image: np.ndarray, rng: np.random.Generator, config: ConfigDict) -> np.ndarray:
    """Normalised float `[S, S, 3]` with random erasing, when `data.erase_prob` > 0."""
    prob = setting(config, "erase_prob")
    return (
        erasing.random_erasing(image, rng, prob, setting(config, "erase_mode")) if prob else image
    )
