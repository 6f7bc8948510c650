"""`clip_shapes`: a built-in, procedurally generated image-caption dataset.

Coloured shapes on textured, nearly grey backgrounds, each image with several
natural-language captions. It needs no download, builds in seconds on one CPU core
and exists to test compositional generalisation: 8 of the 48 colour x shape
combinations never appear in the training split, and zero-shot classification on
them shows whether an image embedding binds colour to shape or memorises pairs.
See docs/shapes_dataset.md for the design, the held-out table and the caption grammar.

Every example is a pure function of `(config.seed, split, index)`, so builds are
byte-identical and generation could be sharded or resumed. Within an example the
random stream is consumed in a fixed order (scene, captions, pixels), which lets
`all_captions` reproduce the training captions without rendering any pixel.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import hashlib
import io
import math
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, ImageDraw


class Colour(NamedTuple):
    """A colour name and the HSV region it covers (hue in degrees, sat/val in [0, 1])."""

    name: str
    hue: float
    hue_jitter: float
    sat: tuple[float, float]
    val: tuple[float, float]


# Hue half-widths are narrower where neighbours are close (red/orange/yellow) so
# that no two regions touch; pink is told from red by saturation as well as hue.
COLOURS = (
    Colour("red", 0.0, 7.0, (0.75, 0.95), (0.75, 0.95)),
    Colour("orange", 30.0, 6.0, (0.80, 1.00), (0.90, 1.00)),
    Colour("yellow", 55.0, 5.0, (0.75, 0.95), (0.90, 1.00)),
    Colour("green", 125.0, 18.0, (0.60, 0.90), (0.60, 0.85)),
    Colour("cyan", 182.0, 8.0, (0.65, 0.95), (0.85, 1.00)),
    Colour("blue", 228.0, 12.0, (0.70, 0.95), (0.75, 1.00)),
    Colour("purple", 280.0, 12.0, (0.55, 0.80), (0.60, 0.85)),
    Colour("pink", 330.0, 10.0, (0.35, 0.55), (0.90, 1.00)),
)
COLOUR_NAMES = tuple(c.name for c in COLOURS)
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
BACKGROUNDS = ("plain", "noise", "stripes", "checker", "gradient")
CLASS_NAMES = tuple(f"{c} {s}" for c in COLOUR_NAMES for s in SHAPES)  # colour-major

# One held-out shape per colour, shape index (5 * colour + 2) mod 6, so every shape
# is held out once or twice and similar colours (red/orange/pink) lose different shapes.
HELD_OUT_PAIRS = tuple((c, SHAPES[(5 * i + 2) % 6]) for i, c in enumerate(COLOUR_NAMES))
HELD_OUT = frozenset(CLASS_NAMES.index(f"{c} {s}") for c, s in HELD_OUT_PAIRS)

SPLITS = ("train", "validation", "test")


def _ring(n: int, radii: tuple[float, ...]) -> np.ndarray:
    """`[n, 2]` vertices round the origin from 12 o'clock, radii cycling (a star alternates)."""
    a = np.deg2rad(np.arange(n) * 360 / n)
    r = np.resize(np.asarray(radii), n)
    return np.stack([r * np.sin(a), -r * np.cos(a)], axis=1)


# Unit polygons `[V, 2]` (x right, y down), all vertices within radius 1 so that an
# object's `radius` bounds what is drawn.
_UNIT_POLYGONS = {
    "square": np.array([(-0.7, -0.7), (0.7, -0.7), (0.7, 0.7), (-0.7, 0.7)]),
    "triangle": _ring(3, (1.0,)),
    # A rhombus, not a square at 45 degrees, so that it differs from a square even
    # under the rotation jitter both get.
    "diamond": np.array([(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]),
    "star": _ring(10, (1.0, 0.45)),
    "cross": np.array(
        [(-0.3, -0.95), (0.3, -0.95), (0.3, -0.3), (0.95, -0.3), (0.95, 0.3), (0.3, 0.3)]
        + [(0.3, 0.95), (-0.3, 0.95), (-0.3, 0.3), (-0.95, 0.3), (-0.95, -0.3), (-0.3, -0.3)]
    ),
}
# Largest rotation in degrees. A square turned by 45 degrees would be a diamond, so
# square, diamond and cross get only a small jitter; triangles and stars keep their
# identity under any rotation (a circle's does not matter).
_MAX_ROTATION = dict(circle=0, square=10, diamond=10, cross=10, triangle=180, star=180)
# Background tones: (hue, saturation, value) ranges. Saturation stays <= 0.15 so that
# no background could pass for one of the named colours.
_TONES = {
    "grey": ((0, 360), (0.0, 0.05), (0.35, 0.7)),
    "dark": ((0, 360), (0.0, 0.12), (0.08, 0.28)),
    "light": ((0, 360), (0.0, 0.05), (0.8, 0.92)),
    "beige": ((25, 50), (0.08, 0.15), (0.7, 0.88)),
}
_SUPERSAMPLE = 4  # draw masks at 4x and box-filter down: exact-coverage anti-aliasing


@dataclasses.dataclass(eq=False)
class ClipShapesConfig(tfds.core.BuilderConfig):
    """Knobs of the dataset. tfds caches a build by config name, so rename a config whose
    fields you edit; keyword overrides passed to `ClipShapes` get a fresh name by themselves.

    Attributes:
        image_size: Side of the square RGB images in pixels.
        colours: The named colours; class names are `f"{colour} {shape}"`, colour-major.
        shapes: Shape names, a subset of `SHAPES`.
        held_out: `(colour, shape)` pairs never drawn in the train split.
        objects_per_image: Inclusive `(min, max)` objects per train image. Validation and
            test images always hold exactly one object so that the label is well defined.
        small_radius: Range of a "small" object's radius, as a fraction of `image_size`.
        large_radius: Range of a "large" object's radius; keep a gap to `small_radius`.
        backgrounds: Background textures to draw from, a subset of `BACKGROUNDS`.
        background_mention_prob: Probability that a caption names the background.
        captions_per_image: Distinct phrasings stored per image.
        num_train: Train examples.
        num_validation: Validation examples; a multiple of the class count gives exact balance.
        num_test: Test examples; a multiple of the class count gives exact balance.
        seed: Base seed; every example draws from `default_rng((seed, split_id, index))`.
    """

    image_size: int = 32
    colours: tuple[Colour, ...] = dataclasses.field(default=COLOURS, repr=False)
    shapes: tuple[str, ...] = SHAPES
    held_out: tuple[tuple[str, str], ...] = HELD_OUT_PAIRS
    objects_per_image: tuple[int, int] = (1, 1)
    small_radius: tuple[float, float] = (0.16, 0.22)
    large_radius: tuple[float, float] = (0.28, 0.38)
    backgrounds: tuple[str, ...] = BACKGROUNDS
    background_mention_prob: float = 0.3
    captions_per_image: int = 3
    num_train: int = 40_000
    num_validation: int = 2_016
    num_test: int = 4_800
    seed: int = 0

    def __post_init__(self):
        # Normalise lists (from JSON or ml_collections) to the hashable tuples used here.
        self.colours = tuple(Colour(*c) for c in self.colours)
        self.shapes, self.backgrounds = tuple(self.shapes), tuple(self.backgrounds)
        self.held_out = tuple(tuple(p) for p in self.held_out)
        for f in ("objects_per_image", "small_radius", "large_radius"):
            setattr(self, f, tuple(getattr(self, f)))
        names = {c.name for c in self.colours}
        bad = [p for p in self.held_out if p[0] not in names or p[1] not in self.shapes]
        known = set(self.shapes) <= set(SHAPES) and set(self.backgrounds) <= set(BACKGROUNDS)
        if bad or not known:
            raise ValueError(f"unknown colour, shape or background in config {self.name!r}: {bad}")
        if not 1 <= self.objects_per_image[0] <= self.objects_per_image[1]:
            raise ValueError(f"bad objects_per_image {self.objects_per_image}")

    # Cached: the generator asks for these once per example.
    @functools.cached_property
    def class_names(self) -> tuple[str, ...]:
        return tuple(f"{c.name} {s}" for c in self.colours for s in self.shapes)

    @functools.cached_property
    def held_out_labels(self) -> frozenset[int]:
        return frozenset(self.class_names.index(f"{c} {s}") for c, s in self.held_out)

    @functools.cached_property
    def seen_labels(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.class_names)) if i not in self.held_out_labels)

    @property
    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}


DEFAULT_CONFIG = ClipShapesConfig(name="default", description="One object per image.")
_KNOBS = frozenset(f.name for f in dataclasses.fields(ClipShapesConfig)) - frozenset(
    f.name for f in dataclasses.fields(tfds.core.BuilderConfig)
)


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One drawn object: centre `(cx, cy)` and `radius` in pixels, `angle` in degrees."""

    colour: str
    shape: str
    size: str  # "small" | "large"
    cx: float
    cy: float
    radius: float
    angle: float
    vpos: str | None  # "top" | "middle" | "bottom"; None in the ambiguous bands between


@dataclasses.dataclass(frozen=True)
class Scene:
    """What one image shows; the first object carries the example's label."""

    objects: tuple[ShapeObject, ...]
    background: str
    tone: str  # "grey" | "dark" | "light" | "beige"


def _vpos(cy: float, size: int) -> str | None:
    # Gaps between the bands keep position words unambiguous for objects near a border.
    y = cy / size
    if y < 0.38:
        return "top"
    if y > 0.62:
        return "bottom"
    return "middle" if 0.42 <= y <= 0.58 else None


def _place(
    rng: np.random.Generator,
    others: list[ShapeObject],
    colour: str,
    shape: str,
    size: str,
    angle: float,
    config: ClipShapesConfig,
) -> ShapeObject | None:
    """Samples radius and centre, fully inside the image and clear of `others`; None if full."""
    # Python floats, not numpy scalars, keep the float32 pixel maths in float32.
    image_size = config.image_size
    radius_range = config.small_radius if size == "small" else config.large_radius
    radius = image_size * float(rng.uniform(*radius_range))
    # Rejection sampling, vectorised: the first of 256 uniform candidate centres that
    # clears every other object (always the first one when there are no others).
    centres = rng.uniform(radius + 0.5, image_size - radius - 0.5, size=(256, 2))
    free = np.ones(len(centres), bool)
    for o in others:
        free &= np.hypot(*(centres - (o.cx, o.cy)).T) > radius + o.radius + 1
    if not free.any():
        return None
    cx, cy = centres[free.argmax()].tolist()
    return ShapeObject(colour, shape, size, cx, cy, radius, angle, _vpos(cy, image_size))


def sample_scene(
    rng: np.random.Generator, config: ClipShapesConfig, label: int | None = None
) -> Scene:
    """Draws objects and background. `label` fixes a single object of that class."""
    if label is None:
        seen = config.seen_labels
        lo, hi = config.objects_per_image
        labels = [seen[i] for i in rng.integers(len(seen), size=rng.integers(lo, hi + 1))]
    else:
        labels = [label]
    objects: list[ShapeObject] = []
    for lab in labels:
        colour, shape = config.class_names[lab].split(" ")
        angle = float(rng.uniform(-1, 1)) * _MAX_ROTATION[shape]
        first_size = "small" if rng.random() < 0.5 else "large"
        # A large object that finds no free spot is tried small, then dropped, so the
        # size words stay honest. The first object always fits, so the label is defined.
        for size in dict.fromkeys((first_size, "small")):
            if obj := _place(rng, objects, colour, shape, size, angle, config):
                objects.append(obj)
                break
    background = config.backgrounds[rng.integers(len(config.backgrounds))]
    tone = tuple(_TONES)[rng.integers(len(_TONES))]
    return Scene(tuple(objects), background, tone)


# ----------------------------------------------------------------------------- captions

_SIZE_WORDS = {"small": ("small", "tiny", "little"), "large": ("large", "big")}
_POS_WORDS = {
    "top": ("at the top", "near the top", "in the upper part"),
    "middle": ("in the middle", "in the centre", "in the center"),
    "bottom": ("at the bottom", "near the bottom", "in the lower part"),
}
_BG_WORDS = {
    "plain": ("plain",),
    "noise": ("noisy", "grainy", "textured"),
    "stripes": ("striped", "textured"),
    "checker": ("checkered", "chequered", "textured"),
    "gradient": ("gradient", "shaded"),
}
_PREFIXES = ("a picture of ", "an image of ", "a photo of ", "a drawing of ", "a rendering of ")
_PREFIXES += ("there is ", "this is ")


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[rng.integers(len(options))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(obj: ShapeObject, rng: np.random.Generator) -> str:
    """'a small red circle', 'a star that is blue', 'an orange-coloured cross', ...."""
    size = _pick(rng, _SIZE_WORDS[obj.size]) + " " if rng.random() < 0.5 else ""
    c, s = obj.colour, obj.shape
    form = rng.integers(8)
    if form < 3:  # the plain order is the most common in real captions
        core = f"{size}{c} {s}"
    elif form == 3:
        core = f"{size}{s} that is {c}"
    elif form == 4:
        core = f"{size}{c}{_pick(rng, ('-coloured', '-colored', ' coloured'))} {s}"
    elif form == 5:
        core = f"{size}{s} in {c}"
    elif form == 6:
        core = f"{size}{s} whose colour is {c}"
    else:
        core = f"{size}{s} {_pick(rng, ('painted', 'coloured', 'colored'))} {c}"
    return f"{_article(core)} {core}"


def _background_phrase(scene: Scene, rng: np.random.Generator) -> str:
    words = [_pick(rng, _BG_WORDS[scene.background])]
    if rng.random() < 0.5:
        words.insert(0, scene.tone)
    return f"{_pick(rng, ('on', 'against'))} {_article(words[0])} {' '.join(words)} background"


def _one_caption(scene: Scene, rng: np.random.Generator, bg_prob: float) -> str:
    objs = scene.objects
    if len(objs) == 1:
        o = objs[0]
        frame = rng.integers(6)
        if frame == 0:
            text = f"the shape is {_article(o.shape)} {o.shape} and it is {o.colour}"
        elif frame == 1:
            text = f"{o.colour} {o.shape}"
        elif frame == 2 and o.vpos is not None:
            text = f"{_pick(rng, _POS_WORDS[o.vpos])} there is {_noun_phrase(o, rng)}"
        else:
            prefix = _pick(rng, _PREFIXES) if rng.random() < 0.4 else ""
            text = prefix + _noun_phrase(o, rng)
            if o.vpos is not None and rng.random() < 0.4:
                text += " " + _pick(rng, _POS_WORDS[o.vpos])
    else:
        top, *_, bottom = sorted(objs, key=lambda o: o.cy)
        apart = bottom.cy - top.cy > top.radius + bottom.radius
        if len(objs) == 2 and apart and rng.random() < 0.4:
            # Vertical relations survive the horizontal flips of the training pipeline.
            if rng.random() < 0.5:
                text = f"{_noun_phrase(top, rng)} above {_noun_phrase(bottom, rng)}"
            else:
                text = f"{_noun_phrase(bottom, rng)} below {_noun_phrase(top, rng)}"
        else:
            nps = []
            for o in (objs[i] for i in rng.permutation(len(objs))):
                np_ = _noun_phrase(o, rng)
                if o.vpos is not None and rng.random() < 0.3:
                    np_ += " " + _pick(rng, _POS_WORDS[o.vpos])
                nps.append(np_)
            text = ", ".join(nps[:-1]) + " and " + nps[-1]
            if rng.random() < 0.3:
                count = ("two", "three", "four", "five")[len(objs) - 2]
                text = f"{_pick(rng, (f'{count} shapes: ', 'there is ', 'a picture of '))}{text}"
    if rng.random() < bg_prob:
        text += " " + _background_phrase(scene, rng)
    if rng.random() < 0.25:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.25:
        text += "."
    return text


def make_captions(scene: Scene, rng: np.random.Generator, n: int, bg_prob: float) -> list[str]:
    """Up to `n` distinct captions of `scene` (fewer only if the grammar keeps repeating)."""
    captions: list[str] = []
    seen: set[str] = set()
    for _ in range(10 * n):
        text = _one_caption(scene, rng, bg_prob)
        key = text.lower().rstrip(".")  # case and a full stop do not make a new phrasing
        if key not in seen:
            seen.add(key)
            captions.append(text)
            if len(captions) == n:
                break
    return captions


# ----------------------------------------------------------------------------- pixels


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h_deg / 360.0) % 1.0, s, v), np.float32)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates `[S, S]` (x, y)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return x, y


def _background(scene: Scene, rng: np.random.Generator, size: int) -> np.ndarray:
    """`[S, S, 3]` float32 in [0, 1]; two tones of one low-saturation hue (sat <= 0.15)."""
    hue_range, sat_range, val_range = _TONES[scene.tone]
    hue, sat, val = (float(rng.uniform(*r)) for r in (hue_range, sat_range, val_range))
    contrast = float(rng.uniform(0.08, 0.2)) * (1 if val < 0.5 else -1)
    a, b = _hsv(hue, sat, val), _hsv(hue, sat, min(max(val + contrast, 0.03), 0.95))
    x, y = _grid(size)
    theta = float(rng.uniform(0, np.pi))
    along = x * math.cos(theta) + y * math.sin(theta)
    if scene.background == "plain":
        t = np.zeros_like(x)
    elif scene.background == "noise":
        t = rng.random(x.shape, dtype=np.float32)
    elif scene.background == "stripes":
        # A clipped sine: square-ish stripes with soft edges, which alias less at 32 px.
        period, phase = float(rng.uniform(4, 10)), float(rng.uniform(0, 2 * np.pi))
        t = np.clip(0.5 + 1.5 * np.sin(along * (2 * math.pi / period) + phase), 0, 1)
    elif scene.background == "checker":
        cell, ox, oy = (float(v) for v in rng.uniform((3, 0, 0), (8, 8, 8)))
        t = (np.floor((x + ox) / cell) + np.floor((y + oy) / cell)) % 2
    else:  # gradient
        t = (along - along.min()) / (along.max() - along.min())
    return a + t[..., None] * (b - a)


def _coverage(obj: ShapeObject, size: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Coverage of `obj` in [0, 1] over its bounding box `[h, w]`, and the box's slices."""
    k = _SUPERSAMPLE
    # Only the bounding box is drawn and composited: the cost is per (supersampled) pixel.
    x0, y0 = max(int(obj.cx - obj.radius), 0), max(int(obj.cy - obj.radius), 0)
    x1, y1 = min(math.ceil(obj.cx + obj.radius), size), min(math.ceil(obj.cy + obj.radius), size)
    canvas = Image.new("L", ((x1 - x0) * k, (y1 - y0) * k), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = obj.cx - x0, obj.cy - y0
    if obj.shape == "circle":
        r = 0.9 * obj.radius
        draw.ellipse([k * (cx - r), k * (cy - r), k * (cx + r), k * (cy + r)], fill=255)
    else:
        c, s = math.cos(math.radians(obj.angle)), math.sin(math.radians(obj.angle))
        pts = _UNIT_POLYGONS[obj.shape] @ np.array([[c, s], [-s, c]]) * obj.radius + (cx, cy)
        draw.polygon([tuple(p) for p in (k * pts).tolist()], fill=255)
    alpha = np.asarray(canvas.resize((x1 - x0, y1 - y0), Image.BOX), np.float32) * (1 / 255)
    return alpha, (slice(y0, y1), slice(x0, x1))


def render_scene(
    scene: Scene, rng: np.random.Generator, config: ClipShapesConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Draws `scene`; returns the image `[S, S, 3]` uint8 and object masks `[K, S, S]`."""
    size = config.image_size
    colours = {c.name: c for c in config.colours}
    img = _background(scene, rng, size)
    masks = np.zeros((len(scene.objects), size, size), np.float32)
    x, y = _grid(size)
    for obj, mask in zip(scene.objects, masks, strict=True):
        spec = colours[obj.colour]
        hue = spec.hue + float(rng.uniform(-1, 1)) * spec.hue_jitter
        rgb = _hsv(hue, float(rng.uniform(*spec.sat)), float(rng.uniform(*spec.val)))
        alpha, box = _coverage(obj, size)
        # Mild directional shading so an object is not one flat RGB value.
        phi, gain = float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 0.12))
        along = (x[box] - obj.cx) * math.cos(phi) + (y[box] - obj.cy) * math.sin(phi)
        paint = np.clip(rgb * (1 + (gain / obj.radius) * along)[..., None], 0, 1)
        img[box] += alpha[..., None] * (paint - img[box])
        mask[box] = alpha
    img += 0.012 * rng.standard_normal(img.shape, dtype=np.float32)  # faint sensor noise
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8), masks


# ----------------------------------------------------------------------------- examples


def render_example(
    rng: np.random.Generator, config: ClipShapesConfig = DEFAULT_CONFIG, label: int | None = None
) -> dict[str, Any]:
    """One example as numpy: a train-style scene, or one object of class `label`.

    Returns:
        A dict with the stored features (`image` as a uint8 array, no `image_id`) plus
        `scene` and the object `masks` `[K, S, S]`, useful for tests and pictures.
    """
    scene = sample_scene(rng, config, label)
    captions = make_captions(scene, rng, config.captions_per_image, config.background_mention_prob)
    image, masks = render_scene(scene, rng, config)
    first = scene.objects[0]
    lab = config.class_names.index(f"{first.colour} {first.shape}")
    return {
        "image": image,
        "captions": captions,
        "label": lab,
        "colour": lab // len(config.shapes),  # class names are colour-major
        "shape": config.shapes.index(first.shape),
        "heldout": lab in config.held_out_labels,
        "num_objects": len(scene.objects),
        "scene": scene,
        "masks": masks,
    }


def _example_rng(config: ClipShapesConfig, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng((config.seed, SPLITS.index(split), index))


def _label(config: ClipShapesConfig, split: str, index: int) -> int | None:
    # Validation and test cycle through every class, one object per image: balanced,
    # held-out classes included, and a well-defined label for zero-shot evaluation.
    return None if split == "train" else index % len(config.class_names)


def generate_example(config: ClipShapesConfig, split: str, index: int) -> dict[str, Any]:
    """The example stored at `split[index]`, deterministic in `(config, split, index)`."""
    ex = render_example(_example_rng(config, split, index), config, _label(config, split, index))
    ex["image_id"] = f"{split}/{index:06d}"
    return ex


def all_captions(config: ClipShapesConfig = DEFAULT_CONFIG, split: str = "train") -> Iterator[str]:
    """Every caption of `split`, identical to the stored ones, without rendering pixels.

    Meant as the corpus for training the small BPE tokenizer.
    """
    for index in range(config.split_sizes[split]):
        rng = _example_rng(config, split, index)
        scene = sample_scene(rng, config, _label(config, split, index))
        yield from make_captions(
            scene, rng, config.captions_per_image, config.background_mention_prob
        )


def caption_words(text: str, vocabulary: tuple[str, ...]) -> list[str]:
    """The words of `vocabulary` that `text` mentions, in order (tests and evaluators use it)."""
    return re.findall(r"\b(" + "|".join(vocabulary) + r")\b", text.lower())


class ClipShapes(tfds.core.GeneratorBasedBuilder):
    """Coloured shapes on textured backgrounds with compositional captions."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        DEFAULT_CONFIG,
        ClipShapesConfig(
            name="multi",
            objects_per_image=(1, 3),
            # Smaller objects, or a large one would leave no room for a second at 32 px.
            small_radius=(0.13, 0.18),
            large_radius=(0.22, 0.28),
            description="One to three smaller objects per train image.",
        ),
        ClipShapesConfig(
            name="smoke",
            num_train=480,
            num_validation=96,
            num_test=96,
            description="A seconds-long build for smoke tests.",
        ),
    ]
    builder_config: ClipShapesConfig

    # tfds' own lookup of a packaged builder's file imports `importlib_resources`, which
    # it does not install (ModuleNotFoundError in download_and_prepare); tell it directly.
    code_path = epath.Path(__file__)

    def __init__(
        self,
        *,
        config: str | ClipShapesConfig | None = None,
        file_format: str | None = None,
        **kwargs: Any,
    ):
        """Like any tfds builder; keyword arguments naming config fields override them.

        `ClipShapes(config="default", objects_per_image=(1, 2))` builds a config named
        `default_<hash of the overrides>`, so a changed knob never reuses stale data.
        """
        knobs = {k: kwargs.pop(k) for k in list(kwargs) if k in _KNOBS}
        if knobs:
            base = config if isinstance(config, ClipShapesConfig) else None
            base = base or self.builder_configs[config or DEFAULT_CONFIG.name]
            config = dataclasses.replace(base, **knobs)  # normalised by __post_init__
            values = repr([getattr(config, k) for k in sorted(_KNOBS)])
            digest = hashlib.sha1(values.encode()).hexdigest()[:8]
            config = dataclasses.replace(config, name=f"{base.name}_{digest}")
        # tfds defaults to TFRecord, which needs TensorFlow; array_record does not and
        # gives the random access that grain wants.
        super().__init__(config=config, file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        s = cfg.image_size
        held = ", ".join(f"{c} {sh}" for c, sh in cfg.held_out)
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Procedural coloured shapes on textured backgrounds with varied natural-language "
                f"captions. Colour x shape combinations held out of train: {held}."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
                    "captions": tfds.features.Sequence(tfds.features.Text()),
                    "image_id": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=list(cfg.class_names)),
                    "colour": tfds.features.ClassLabel(names=[c.name for c in cfg.colours]),
                    "shape": tfds.features.ClassLabel(names=list(cfg.shapes)),
                    "heldout": tfds.features.Scalar(dtype=np.bool_),
                    "num_objects": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # procedural: nothing to download
        sizes = self.builder_config.split_sizes
        return {split: self._generate_examples(split, n) for split, n in sizes.items()}

    def _generate_examples(self, split: str, num: int) -> Iterator[tuple[int, dict[str, Any]]]:
        for index in range(num):
            ex = generate_example(self.builder_config, split, index)
            buf = io.BytesIO()
            Image.fromarray(ex.pop("image")).save(buf, format="PNG")
            del ex["scene"], ex["masks"]
            yield index, {"image": buf.getvalue(), **ex}
