"""RandAugment (Cubuk et al. 2020) as timm configures it, on PIL images (host side).

`parse("rand-m9-mstd0.5")` reads timm's spec strings (DeiT's and Swin's recipe): `m` the
magnitude on a 0..10 scale (default 10), `n` the number of ops per image (2), `mstd` the
standard deviation of Gaussian noise on the magnitude each time an op runs (0; above 100
means uniform in [0, m]), `p` the probability that a chosen op runs at all (0.5), `inc1`
the "increasing" variants of the ops (the default of DeiT's and Swin's code).

The op list is timm's `_RAND_TRANSFORMS`: the paper's 14 operations with Identity left to
the `p` coin, the translations relative to the image size, plus Invert and SolarizeAdd.
Ops are chosen with replacement. Magnitude maps to arguments as in timm's `LEVEL_TO_ARG`:
geometric ops get a random sign; by default Posterize keeps `int(0.4 m)` bits, Solarize
inverts above `int(25.6 m)` (both milder as m grows, as in the TPU EfficientNet code timm
follows) and the enhancements use the factor `0.18 m + 0.1`; the increasing variants keep
`4 - int(0.4 m)` bits, invert above `256 - int(25.6 m)` and enhance by `1 +- 0.09 m`.
Geometric ops resample bicubic and fill with the dataset's mean colour, as timm's
transforms factory asks it to.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10.0  # magnitudes are on a 0..10 scale (timm's _LEVEL_DENOM)
TRANSLATE_FRACTION = 0.45  # of the image side at magnitude 10
RESAMPLE = Image.Resampling.BICUBIC

Fill = tuple[int, int, int]


def _affine(image: Image.Image, matrix: tuple[float, ...], fill: Fill) -> Image.Image:
    """`image` sampled at `matrix` (output pixel (x, y) reads input (ax + by + c, dx + ey + f))."""
    return image.transform(image.size, Image.Transform.AFFINE, matrix, RESAMPLE, fillcolor=fill)


def _lookup(image: Image.Image, table: Sequence[int]) -> Image.Image:
    """The same 256-entry lookup table on each of the three channels."""
    return image.point(list(table) * 3)


def rotate(image: Image.Image, degrees: float, fill: Fill) -> Image.Image:
    return image.rotate(degrees, RESAMPLE, fillcolor=fill)


def shear_x(image: Image.Image, factor: float, fill: Fill) -> Image.Image:
    return _affine(image, (1, factor, 0, 0, 1, 0), fill)


def shear_y(image: Image.Image, factor: float, fill: Fill) -> Image.Image:
    return _affine(image, (1, 0, 0, factor, 1, 0), fill)


def translate_x(image: Image.Image, fraction: float, fill: Fill) -> Image.Image:
    return _affine(image, (1, 0, fraction * image.width, 0, 1, 0), fill)


def translate_y(image: Image.Image, fraction: float, fill: Fill) -> Image.Image:
    return _affine(image, (1, 0, 0, 0, 1, fraction * image.height), fill)


def posterize(image: Image.Image, bits: int, fill: Fill) -> Image.Image:
    """Keeps the `bits` high bits of each channel; 0 bits is black, as in the TPU code (recent
    Pillow refuses 0, which magnitudes below 2.5 give)."""
    if bits <= 0:
        return Image.new(image.mode, image.size)
    return image if bits >= 8 else ImageOps.posterize(image, bits)


def solarize(image: Image.Image, threshold: int, fill: Fill) -> Image.Image:
    return ImageOps.solarize(image, threshold)


def solarize_add(image: Image.Image, add: int, fill: Fill) -> Image.Image:
    """Adds `add` to the pixels below 128 (clipped at 255), leaves the others."""
    return _lookup(image, [min(255, i + add) if i < 128 else i for i in range(256)])


def _enhance(enhancer: type) -> Callable[[Image.Image, float, Fill], Image.Image]:
    return lambda image, factor, fill: enhancer(image).enhance(factor)


def _no_argument(op: Callable[[Image.Image], Image.Image]):
    return lambda image, argument, fill: op(image)


def _signed(scale: float) -> Callable[[float, np.random.Generator], float]:
    """`magnitude / 10 * scale` with a random sign."""
    return lambda level, rng: (-1 if rng.random() < 0.5 else 1) * level / MAX_LEVEL * scale


def _enhance_factor(level: float, rng: np.random.Generator) -> float:
    return level / MAX_LEVEL * 1.8 + 0.1  # [0.1, 1.9]; 1 leaves the image as it is


def _enhance_increasing_factor(level: float, rng: np.random.Generator) -> float:
    """`1 +- 0.9 m / 10`: further from 1 (stronger either way) as the magnitude grows."""
    return max(0.1, 1.0 + _signed(0.9)(level, rng))


def _posterize_bits(level: float, rng: np.random.Generator) -> int:
    return int(level / MAX_LEVEL * 4)


def _solarize_threshold(level: float, rng: np.random.Generator) -> int:
    return min(256, int(level / MAX_LEVEL * 256))


@dataclasses.dataclass(frozen=True)
class Op:
    """One RandAugment operation: `apply(image, argument, fill)` and the magnitude's
    argument, `to_argument(magnitude, rng)` (None for ops without one)."""

    apply: Callable[[Image.Image, float, Fill], Image.Image]
    to_argument: Callable[[float, np.random.Generator], float] | None = None


OPS: dict[str, Op] = {
    "AutoContrast": Op(_no_argument(ImageOps.autocontrast)),
    "Equalize": Op(_no_argument(ImageOps.equalize)),
    "Invert": Op(_no_argument(ImageOps.invert)),
    "Rotate": Op(rotate, _signed(30.0)),
    "Posterize": Op(posterize, _posterize_bits),
    "Solarize": Op(solarize, _solarize_threshold),
    "SolarizeAdd": Op(solarize_add, lambda level, rng: min(128, int(level / MAX_LEVEL * 110))),
    "Color": Op(_enhance(ImageEnhance.Color), _enhance_factor),
    "Contrast": Op(_enhance(ImageEnhance.Contrast), _enhance_factor),
    "Brightness": Op(_enhance(ImageEnhance.Brightness), _enhance_factor),
    "Sharpness": Op(_enhance(ImageEnhance.Sharpness), _enhance_factor),
    "ShearX": Op(shear_x, _signed(0.3)),
    "ShearY": Op(shear_y, _signed(0.3)),
    "TranslateXRel": Op(translate_x, _signed(TRANSLATE_FRACTION)),
    "TranslateYRel": Op(translate_y, _signed(TRANSLATE_FRACTION)),
}
# The "increasing" variants (spec part `inc1`, DeiT's and Swin's default): every op gets
# stronger with the magnitude, the enhancements in either direction.
INCREASING_OPS: dict[str, Op] = {
    **OPS,
    "Posterize": Op(posterize, lambda level, rng: 4 - _posterize_bits(level, rng)),
    "Solarize": Op(solarize, lambda level, rng: 256 - _solarize_threshold(level, rng)),
    **{
        name: dataclasses.replace(OPS[name], to_argument=_enhance_increasing_factor)
        for name in ("Color", "Contrast", "Brightness", "Sharpness")
    },
}
OP_NAMES = tuple(OPS)


@dataclasses.dataclass(frozen=True)
class RandAugment:
    """A parsed spec: `num_ops` ops per image at `magnitude` (0..10), each run with
    probability `prob`, the magnitude jittered by `magnitude_std` (inf: uniform in [0, m]),
    the `increasing` variants of the ops or timm's default ones."""

    magnitude: float = MAX_LEVEL
    num_ops: int = 2
    magnitude_std: float = 0.0
    prob: float = 0.5
    increasing: bool = False

    @property
    def ops(self) -> dict[str, Op]:
        return INCREASING_OPS if self.increasing else OPS


def parse(spec: str) -> RandAugment:
    """timm's spec such as `rand-m9-n2-mstd0.5-p0.5-inc1` -> `RandAugment`, or a ValueError."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(
            f"data.randaugment={spec!r} must start with 'rand' (e.g. 'rand-m9-mstd0.5')"
        )
    fields = {
        "m": "magnitude",
        "n": "num_ops",
        "mstd": "magnitude_std",
        "p": "prob",
        "inc": "increasing",
    }
    values: dict[str, float] = {}
    for part in parts[1:]:
        match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d*)?)", part)
        if not match or match.group(1) not in fields:
            raise ValueError(
                f"data.randaugment={spec!r}: cannot read {part!r}; known parts are "
                "m<magnitude>, n<ops>, mstd<std>, p<probability>, inc<0 or 1>"
            )
        values[fields[match.group(1)]] = float(match.group(2))
    if "num_ops" in values:
        values["num_ops"] = int(values["num_ops"])
    if "increasing" in values:
        values["increasing"] = bool(values["increasing"])
    if values.get("magnitude_std", 0.0) > 100:
        values["magnitude_std"] = math.inf  # timm's convention for uniform magnitudes
    result = RandAugment(**values)
    if not 0 <= result.prob <= 1 or result.magnitude > MAX_LEVEL:
        raise ValueError(f"data.randaugment={spec!r}: need p in [0, 1] and m at most 10")
    return result


def sample_magnitude(rng: np.random.Generator, config: RandAugment) -> float:
    """The magnitude one op runs at, clipped to [0, 10]."""
    magnitude = config.magnitude
    if config.magnitude_std == math.inf:
        magnitude = rng.uniform(0, magnitude)
    elif config.magnitude_std > 0:
        magnitude = rng.normal(magnitude, config.magnitude_std)
    return float(min(max(magnitude, 0.0), MAX_LEVEL))


def apply_op(
    image: Image.Image,
    name: str,
    magnitude: float,
    rng: np.random.Generator,
    fill: Fill,
    ops: dict[str, Op] = OPS,
) -> Image.Image:
    """Op `name` of `ops` at `magnitude` (its sign, if any, drawn from `rng`)."""
    op = ops[name]
    argument = op.to_argument(magnitude, rng) if op.to_argument else None
    return op.apply(image, argument, fill)


def rand_augment(
    image: np.ndarray, rng: np.random.Generator, config: RandAugment, fill: Fill
) -> np.ndarray:
    """uint8 `[H, W, 3]` through `config.num_ops` random ops -> uint8 `[H, W, 3]`."""
    pil = Image.fromarray(image)
    for index in rng.integers(len(OP_NAMES), size=config.num_ops):
        if rng.random() < config.prob:
            magnitude = sample_magnitude(rng, config)
            pil = apply_op(pil, OP_NAMES[index], magnitude, rng, fill, config.ops)
    return np.asarray(pil)


def fill_colour(mean: Sequence[float]) -> Fill:
    """The uint8 colour of the normalisation mean, which normalises to zero (timm's img_mean)."""
    return tuple(min(255, round(255 * m)) for m in mean)  # type: ignore[return-value]
