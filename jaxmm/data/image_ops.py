"""Image preprocessing on numpy arrays (host side, inside the input pipeline).

Images arrive as `uint8 [H, W, 3]` from any of the tfds builders and leave as
`float32 [S, S, 3]`, normalised with the mean and standard deviation the
config gives (CLIP's by default).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

# OpenAI CLIP's normalisation constants (RGB, 0..1 scale).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# ImageNet's, which torchvision and timm weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """A crop box `(left, top, right, bottom)` as in Inception / torchvision's RandomResizedCrop.

    Area is uniform in `scale` times the image area and the log aspect ratio is
    uniform in `ratio`; after `attempts` misses it falls back to the central crop
    with the aspect ratio clamped to `ratio`.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return left, top, left + crop_w, top + crop_h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        crop_w, crop_h = round(height * ratio[1]), height
    else:
        crop_w, crop_h = width, height
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return left, top, left + crop_w, top + crop_h


def pad(image: np.ndarray, padding: int) -> np.ndarray:
    """`[H, W, C]` with `padding` black pixels on every side (torchvision's `fill=0`)."""
    return np.pad(image, ((padding, padding), (padding, padding), (0, 0)))


def random_crop_box(
    rng: np.random.Generator, height: int, width: int, size: int
) -> tuple[int, int, int, int]:
    """A `size` x `size` box `(left, top, right, bottom)` uniformly placed inside the image."""
    if size > min(height, width):
        raise ValueError(f"cannot crop {size}x{size} out of a {height}x{width} image")
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    return left, top, left + size, top + size


def center_crop_box(height: int, width: int, fraction: float = 1.0) -> tuple[int, int, int, int]:
    """The central square spanning `fraction` of the shorter side, `(left, top, right, bottom)`."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the central crop fraction must be in (0, 1], got {fraction}")
    side = max(1, round(min(height, width) * fraction))
    top, left = (height - side) // 2, (width - side) // 2
    return left, top, left + side, top + side


def crop_resize(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crops `box` out of `uint8 [H, W, 3]` and resizes it to `[size, size, 3]` (bicubic)."""
    pil = Image.fromarray(image)
    if box == (0, 0, pil.width, pil.height) and pil.size == (size, size):
        return image
    return np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC, box=box))


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
    """`uint8 [.., 3]` -> float32 `(x / 255 - mean) / std`."""
    scale = np.float32(1 / 255)
    return (image.astype(np.float32) * scale - np.asarray(mean, np.float32)) / np.asarray(
        std, np.float32
    )
