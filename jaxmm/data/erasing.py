"""Random erasing (Zhong et al. 2020) on normalised float images, as timm's `RandomErasing`.

With probability `prob` one rectangle is drawn: area uniform in [2%, 1/3] of the image,
log aspect ratio uniform in [log 0.3, log 1/0.3], up to 10 tries for one that fits
strictly inside (timm's and torchvision's rule); it is filled according to `mode`:
- "pixel": standard normal noise per pixel and channel (DeiT's `remode='pixel'`);
- "rand": one standard normal colour for the whole rectangle;
- "const": zeros, i.e. the dataset mean once normalised (torchvision's default `value=0`).
The image is already normalised, so noise of unit variance has the data's own scale.
"""

from __future__ import annotations

import math

import numpy as np

MODES = ("pixel", "rand", "const")
SCALE = (0.02, 1 / 3)
RATIO = (0.3, 1 / 0.3)
ATTEMPTS = 10


def erase_box(
    rng: np.random.Generator, height: int, width: int
) -> tuple[int, int, int, int] | None:
    """`(top, left, box_height, box_width)` of a rectangle to erase, or None after 10 misses."""
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(ATTEMPTS):
        area = rng.uniform(*SCALE) * height * width
        aspect = math.exp(rng.uniform(*log_ratio))
        box_h = round(math.sqrt(area * aspect))
        box_w = round(math.sqrt(area / aspect))
        if box_w < width and box_h < height:
            top = int(rng.integers(0, height - box_h + 1))
            left = int(rng.integers(0, width - box_w + 1))
            return top, left, box_h, box_w
    return None


def erase(
    image: np.ndarray, box: tuple[int, int, int, int], values: np.ndarray | float
) -> np.ndarray:
    """A copy of float `[H, W, C]` with `box` (top, left, h, w) set to `values` (broadcast)."""
    top, left, box_h, box_w = box
    result = image.copy()
    result[top : top + box_h, left : left + box_w] = values
    return result


def random_erasing(
    image: np.ndarray, rng: np.random.Generator, prob: float, mode: str = "pixel"
) -> np.ndarray:
    """float `[H, W, C]` with one random rectangle erased with probability `prob`."""
    if rng.random() >= prob:
        return image
    box = erase_box(rng, image.shape[0], image.shape[1])
    if box is None:
        return image
    _, _, box_h, box_w = box
    channels = image.shape[-1]
    shape = {"pixel": (box_h, box_w, channels), "rand": (1, 1, channels), "const": None}[mode]
    values = 0.0 if shape is None else rng.standard_normal(shape, dtype=np.float32)
    return erase(image, box, values)


def check(prob: float, mode: str) -> None:
    """A one-line `ValueError` for a probability outside [0, 1] or an unknown mode."""
    if not 0 <= prob <= 1:
        raise ValueError(f"data.erase_prob must be in [0, 1], got {prob}")
    if mode not in MODES:
        raise ValueError(f"data.erase_mode={mode!r} is unknown; choose from {MODES}")
