"""ColorJitter: random brightness, contrast, saturation and hue (host side, numpy).

The four adjustments follow torchvision's definitions on float images in [0, 1]
(`torchvision.transforms.v2.functional.adjust_*`): brightness scales, contrast blends with
the image's mean grey level, saturation blends with each pixel's grey level (ITU-R 601-2
luma weights, as PIL's "L" conversion), hue rotates the HSV hue by a fraction of the
circle. The factors are drawn as torchvision's `ColorJitter` draws them: uniform in
`[max(0, 1 - s), 1 + s]` for strength `s` (hue: uniform in `[-h, h]`, `h <= 0.5`).

torchvision applies the four in a random order every call; `random_order=False` keeps the
listed order (brightness, contrast, saturation, hue), which draws less and is what most
recipes write down. The image stays in float between the adjustments and is rounded to
uint8 once at the end: torchvision on a uint8 tensor truncates after each one, so the two
differ by rounding only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# ITU-R 601-2 luma, the weights of torchvision's rgb_to_grayscale and PIL's convert("L").
LUMA = np.asarray([0.2989, 0.587, 0.114], np.float32)
NAMES = ("brightness", "contrast", "saturation", "hue")


def grayscale(image: np.ndarray) -> np.ndarray:
    """float `[H, W, 3]` -> `[H, W, 1]` luma."""
    return (image @ LUMA)[..., None]


def blend(image: np.ndarray, other: np.ndarray | float, factor: float) -> np.ndarray:
    """`factor * image + (1 - factor) * other`, clipped to [0, 1] (factor > 1 extrapolates)."""
    return np.clip(factor * image + (1 - factor) * other, 0.0, 1.0)


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    return blend(image, 0.0, factor)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    return blend(image, grayscale(image).mean(), factor)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    return blend(image, grayscale(image), factor)


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """float RGB `[H, W, 3]` in [0, 1] -> HSV with hue in [0, 1) (grey pixels get hue 0)."""
    r, g, b = np.moveaxis(image, -1, 0)
    value = image.max(axis=-1)
    spread = value - image.min(axis=-1)
    grey = spread == 0
    saturation = np.where(grey, 0.0, spread / np.where(value == 0, 1.0, value))
    safe = np.where(grey, 1.0, spread)
    # Hue in sixths of the circle, measured from whichever channel is largest (red wins ties).
    hue = np.select(
        [value == r, value == g],
        [(g - b) / safe, 2.0 + (b - r) / safe],
        default=4.0 + (r - g) / safe,
    )
    hue = np.where(grey, 0.0, hue / 6.0) % 1.0
    return np.stack([hue, saturation, value], axis=-1).astype(image.dtype)


def hsv_to_rgb(image: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_hsv`."""
    hue, saturation, value = np.moveaxis(image, -1, 0)
    sector = np.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    sector = sector.astype(np.int64) % 6
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * fraction)
    t = value * (1.0 - saturation * (1.0 - fraction))
    # Each sector of the hue circle orders (value, p, q, t) differently over (R, G, B).
    red = np.choose(sector, [value, q, p, p, t, value])
    green = np.choose(sector, [t, value, value, q, p, p])
    blue = np.choose(sector, [p, p, t, value, value, q])
    return np.stack([red, green, blue], axis=-1).astype(image.dtype)


def adjust_hue(image: np.ndarray, shift: float) -> np.ndarray:
    """Rotates the hue by `shift` of the full circle, `shift` in [-0.5, 0.5]."""
    hsv = rgb_to_hsv(image)
    hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
    return hsv_to_rgb(hsv)


ADJUSTMENTS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def check_strengths(strengths: Sequence[float]) -> None:
    """A one-line `ValueError` unless `strengths` is 4 numbers, hue's at most 0.5."""
    if len(strengths) != 4 or any(s < 0 for s in strengths):
        raise ValueError(
            "data.color_jitter must be 4 non-negative strengths (brightness, contrast, "
            f"saturation, hue), got {tuple(strengths)}"
        )
    if strengths[3] > 0.5:
        raise ValueError(f"data.color_jitter hue strength must be at most 0.5, got {strengths[3]}")


def sample_factors(rng: np.random.Generator, strengths: Sequence[float]) -> list[float | None]:
    """ColorJitter's factors for `strengths`; None where a strength is 0 (no draw, no op)."""
    factors: list[float | None] = []
    for name, strength in zip(NAMES, strengths, strict=True):
        if not strength:
            factors.append(None)
        elif name == "hue":
            factors.append(float(rng.uniform(-strength, strength)))
        else:
            factors.append(float(rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength)))
    return factors


def jitter(
    image: np.ndarray, factors: Sequence[float | None], order: Sequence[int] = range(4)
) -> np.ndarray:
    """uint8 `[H, W, 3]` adjusted by `factors` (None skips one) in `order` -> uint8."""
    result = image.astype(np.float32) / 255.0
    for index in order:
        if factors[index] is not None:
            result = ADJUSTMENTS[index](result, factors[index])
    return np.round(result * 255.0).astype(np.uint8)


def color_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    strengths: Sequence[float],
    random_order: bool = False,
) -> np.ndarray:
    """uint8 `[H, W, 3]` with random brightness, contrast, saturation and hue -> uint8."""
    factors = sample_factors(rng, strengths)
    return jitter(image, factors, rng.permutation(4) if random_order else range(4))
