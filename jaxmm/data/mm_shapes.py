"""`mm_shapes`: a built-in image + text classification dataset that needs both modalities.

Each example is one `clip_shapes` object on a textured background (the scenes and pixels of
`jaxmm.data.shapes`) with a short product-style description. The description gives the
object's material (wooden, metal, glass or plastic, in many phrasings), which no pixel
shows; it never names the shape, which only the image shows. The label is the pair:

    label = material * num_shapes + shape      e.g. "wooden circle", "glass star"

so a model that reads only the image can at best guess the material (top-1 <= 1/4 on the
balanced evaluation splits), one that reads only the text can at best guess the shape
(<= 1/6), and one that fuses both can be exact. Colour is drawn independently of the label,
shown in the image and often named in the text: a shared, useless cue. Four material x
shape pairs never appear in train (`heldout`), so the evaluation splits measure whether a
fusion model composes the two attributes or memorises pairs. See docs/mm_shapes.md for the
design, the grammar and the chance levels.

Every example is a pure function of `(config.seed, split, index)`. The image and the text
draw from two separate streams, so the pixels cannot depend on the material by accident and
`all_texts` reproduces the stored texts without rendering a pixel.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import re
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from jaxmm.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    SPLITS,
    ClipShapesConfig,
    Colour,
    render_scene,
    sample_scene,
)


class Material(NamedTuple):
    """A material, the attribute only the text gives.

    `name` is the adjective used in class names; `adjectives` go before a noun ("an oak
    charm"), `nouns` after "made of" ("made of cast iron"). Each phrase ends in a head word
    (`head_words`) that identifies the material; the words before it ("cast", "blown") are
    modifiers that name no material.
    """

    name: str
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]

    @property
    def head_words(self) -> frozenset[str]:
        return frozenset(re.split(r"[ -]", p)[-1] for p in self.adjectives + self.nouns)


MATERIALS = (
    Material(
        "wooden",
        ("wooden", "oak", "pine", "walnut", "beech"),
        ("wood", "oak", "pine", "walnut", "beech"),
    ),
    Material(
        "metal",
        ("metal", "steel", "brass", "iron", "aluminium"),
        ("metal", "steel", "brass", "cast iron", "aluminium"),
    ),
    Material(
        "glass",
        ("glass", "crystal", "blown-glass", "frosted-glass"),
        ("glass", "crystal", "blown glass", "frosted glass"),
    ),
    Material(
        "plastic",
        ("plastic", "acrylic", "vinyl", "resin"),
        ("plastic", "acrylic", "vinyl", "resin"),
    ),
)
MATERIAL_NAMES = tuple(m.name for m in MATERIALS)
CLASS_NAMES = tuple(f"{m} {s}" for m in MATERIAL_NAMES for s in SHAPES)  # material-major

# One held-out shape per material, four different shapes, so every material is still seen
# with five shapes and every shape with three or four materials.
HELD_OUT_PAIRS = (
    ("wooden", "triangle"),
    ("metal", "circle"),
    ("glass", "star"),
    ("plastic", "square"),
)
HELD_OUT = frozenset(CLASS_NAMES.index(f"{m} {s}") for m, s in HELD_OUT_PAIRS)


@dataclasses.dataclass(eq=False)
class MmShapesConfig(tfds.core.BuilderConfig):
    """Knobs of the dataset. Keyword overrides passed to `MmShapes` get a fresh config name.

    Attributes:
        image_size: Side of the square RGB images in pixels.
        colours: The named colours (`shapes.Colour` regions); drawn uniformly, independent
            of the label.
        shapes: Shape names, a subset of `shapes.SHAPES`.
        materials: The text-only attribute's values (`Material`s).
        held_out: `(material, shape)` pairs never drawn in the train split.
        small_radius: Range of a "small" object's radius, as a fraction of `image_size`.
        large_radius: Range of a "large" object's radius; keep a gap to `small_radius`.
        backgrounds: Background textures, a subset of `shapes.BACKGROUNDS`.
        colour_mention_prob: Probability that the text names the object's (true) colour.
        max_distractors: Most product phrases (price, shipping, ...) added to a text; the
            count is uniform in `[0, max_distractors]`.
        num_train: Train examples, uniform over the classes not held out.
        num_validation: Validation examples; a multiple of the class count gives exact balance.
        num_test: Test examples; a multiple of the class count gives exact balance.
        seed: Base seed; example `index` of `split` draws from
            `default_rng((seed, split_id, index, stream))`, stream 0 for the image, 1 the text.
    """

    image_size: int = 32
    colours: tuple[Colour, ...] = dataclasses.field(default=COLOURS, repr=False)
    shapes: tuple[str, ...] = SHAPES
    materials: tuple[Material, ...] = dataclasses.field(default=MATERIALS, repr=False)
    held_out: tuple[tuple[str, str], ...] = HELD_OUT_PAIRS
    small_radius: tuple[float, float] = (0.16, 0.22)
    large_radius: tuple[float, float] = (0.28, 0.38)
    backgrounds: tuple[str, ...] = BACKGROUNDS
    colour_mention_prob: float = 0.5
    max_distractors: int = 2
    num_train: int = 20_000
    num_validation: int = 1_200
    num_test: int = 2_400
    seed: int = 0

    def __post_init__(self):
        # Normalise lists (from JSON or ml_collections) to hashable tuples.
        self.colours = tuple(Colour(*c) for c in self.colours)
        self.materials = tuple(Material(m[0], tuple(m[1]), tuple(m[2])) for m in self.materials)
        self.shapes, self.backgrounds = tuple(self.shapes), tuple(self.backgrounds)
        self.held_out = tuple(tuple(p) for p in self.held_out)
        self.small_radius, self.large_radius = tuple(self.small_radius), tuple(self.large_radius)
        names = [m.name for m in self.materials]
        bad = [p for p in self.held_out if p[0] not in names or p[1] not in self.shapes]
        if bad:
            raise ValueError(
                f"unknown material or shape in held_out of config {self.name!r}: {bad}"
            )
        words = [w for m in self.materials for w in m.head_words]
        if len(set(words)) != len(words) or len(set(names)) != len(names):
            raise ValueError(f"materials of config {self.name!r} share a name or a head word")
        if len(set(self.held_out)) >= len(self.class_names):
            raise ValueError(f"config {self.name!r} holds out every class")
        if not 0 <= self.colour_mention_prob <= 1 or self.max_distractors < 0:
            raise ValueError(
                f"bad colour_mention_prob {self.colour_mention_prob} or max_distractors "
                f"{self.max_distractors} in config {self.name!r}"
            )
        self.scene_config  # noqa: B018  validates colours, shapes and backgrounds now

    @property
    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}

    # Cached: the generator asks for these once per example.
    @functools.cached_property
    def class_names(self) -> tuple[str, ...]:
        return tuple(f"{m.name} {s}" for m in self.materials for s in self.shapes)

    @functools.cached_property
    def held_out_labels(self) -> frozenset[int]:
        return frozenset(self.class_names.index(f"{m} {s}") for m, s in self.held_out)

    @functools.cached_property
    def seen_labels(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.class_names)) if i not in self.held_out_labels)

    @functools.cached_property
    def scene_config(self) -> ClipShapesConfig:
        """The `clip_shapes` config that draws and renders the one-object scenes.

        Nothing is held out there: every colour goes with every shape.
        """
        return ClipShapesConfig(
            name=f"{self.name}_scene",
            image_size=self.image_size,
            colours=self.colours,
            shapes=self.shapes,
            held_out=(),
            small_radius=self.small_radius,
            large_radius=self.large_radius,
            backgrounds=self.backgrounds,
        )


DEFAULT_CONFIG = MmShapesConfig(name="default", description="One object, one description.")
_KNOBS = frozenset(f.name for f in dataclasses.fields(MmShapesConfig)) - frozenset(
    f.name for f in dataclasses.fields(tfds.core.BuilderConfig)
)


# ----------------------------------------------------------------------------- text

# Product nouns chosen to suggest no shape ("coin", "ring", "block" or "tile" would).
_NOUNS = (
    "ornament",
    "charm",
    "figurine",
    "magnet",
    "pendant",
    "paperweight",
    "decoration",
    "keepsake",
    "trinket",
)
_MADE_OF = ("made of", "made from", "crafted from", "cut from")
_OPENERS = ("New: ", "Bestseller: ", "In stock: ", "Just in: ", "Sale: ")


def _price(rng: np.random.Generator) -> str:
    n = int(rng.integers(3, 60))
    return _pick(rng, (f"only ${n}", f"${n}.99", f"under ${n + 1}", f"now {5 * (n % 7 + 1)}% off"))


def _shipping(rng: np.random.Generator) -> str:
    return _pick(rng, ("free shipping", f"ships in {rng.integers(1, 8)} days", "ships worldwide"))


def _rating(rng: np.random.Generator) -> str:
    score = f"{rng.integers(35, 51) / 10:.1f}"
    return _pick(
        rng, (f"rated {score}/5", "a customer favourite", f"{rng.integers(2, 900)} reviews")
    )


def _use(rng: np.random.Generator) -> str:
    return _pick(rng, ("perfect for desks", "a great gift", "for the living room", "made by hand"))


def _extra(rng: np.random.Generator) -> str:
    # Other materials, none of them a label value: a model must learn which words matter.
    return _pick(
        rng,
        ("comes with a cotton cord", "in a paper gift bag", "on a leather strap", "linen pouch"),
    )


def _dimension(rng: np.random.Generator) -> str:
    n = int(rng.integers(3, 20))
    return _pick(rng, (f"{n} cm wide", f"{n} cm tall", f"weighs {10 * n} g"))


_DISTRACTORS = (_price, _shipping, _rating, _use, _extra, _dimension)


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[rng.integers(len(options))]


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _core(material: Material, colour: str | None, rng: np.random.Generator) -> str:
    """The sentence that names the material (and the colour, when given)."""
    noun, adj, mnoun = (
        _pick(rng, _NOUNS),
        _pick(rng, material.adjectives),
        _pick(rng, material.nouns),
    )
    in_colour = f" in {colour}" if colour else ""
    form = rng.integers(6)
    if form == 0:  # "a red oak charm"
        return _with_article(f"{colour + ' ' if colour else ''}{adj} {noun}")
    if form == 1:  # "charm crafted from walnut in red"
        return f"{noun} {_pick(rng, _MADE_OF)} {mnoun}{in_colour}"
    if form == 2:  # spec sheet, either order
        fields = [f"material: {mnoun}"] + ([f"colour: {colour}"] if colour else [])
        return ". ".join(fields if rng.random() < 0.5 else fields[::-1])
    if form == 3:  # "this red charm is made of brass"
        return f"this {colour + ' ' if colour else ''}{noun} is made of {mnoun}"
    if form == 4:  # "cast iron pendant in blue"
        return f"{mnoun} {noun}{in_colour}"
    # "blue pendant, solid brass"
    return f"{colour + ' ' if colour else ''}{noun}, {_pick(rng, ('solid ', 'pure ', ''))}{mnoun}"


def make_text(
    material: Material, colour: str, rng: np.random.Generator, config: MmShapesConfig
) -> str:
    """One product description that names `material`, maybe `colour`, and never a shape.

    The shape is not an argument: nothing here can depend on it.
    """
    named = colour if rng.random() < config.colour_mention_prob else None
    parts = [_core(material, named, rng)]
    count = int(rng.integers(config.max_distractors + 1))
    for i in rng.permutation(len(_DISTRACTORS))[:count]:
        parts.append(_DISTRACTORS[i](rng))
    opener = _pick(rng, _OPENERS) if rng.random() < 0.2 else ""
    sep = _pick(rng, (", ", ". ", "; "))
    text = re.sub(r"\. (\w)", lambda m: ". " + m.group(1).upper(), sep.join(parts))
    if rng.random() < 0.7:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.5:
        text += "."
    return opener + text


def text_material(text: str, config: MmShapesConfig = DEFAULT_CONFIG) -> int | None:
    """The index of the material `text` names by a head word, or None if it names none.

    Raises:
        ValueError: the text names two materials.
    """
    words = set(re.findall(r"[a-z]+", text.lower()))
    found = [i for i, m in enumerate(config.materials) if words & m.head_words]
    if len(found) > 1:
        raise ValueError(f"{text!r} names {len(found)} materials")
    return found[0] if found else None


# ----------------------------------------------------------------------------- examples


def _rngs(config: MmShapesConfig, split: str, index: int) -> tuple[np.random.Generator, ...]:
    key = (config.seed, SPLITS.index(split), index)
    return np.random.default_rng((*key, 0)), np.random.default_rng((*key, 1))


def _draw_label(config: MmShapesConfig, split: str, index: int, rng) -> tuple[int, int]:
    """The example's class and colour index, the first draws of the image stream."""
    if split == "train":
        label = config.seen_labels[rng.integers(len(config.seen_labels))]
    else:
        # Evaluation splits cycle through every class, held-out ones included: balanced.
        label = index % len(config.class_names)
    return label, int(rng.integers(len(config.colours)))


def _text_of(config: MmShapesConfig, label: int, colour: int, rng) -> str:
    material = config.materials[label // len(config.shapes)]
    return make_text(material, config.colours[colour].name, rng, config)


def generate_example(config: MmShapesConfig, split: str, index: int) -> dict[str, Any]:
    """The example stored at `split[index]`, deterministic in `(config, split, index)`.

    Returns:
        The stored features, `image` as uint8 `[S, S, 3]`, plus the drawn `scene`.
    """
    image_rng, text_rng = _rngs(config, split, index)
    label, colour = _draw_label(config, split, index, image_rng)
    shape = label % len(config.shapes)
    scene_config = config.scene_config
    # The scene config's classes are colour-major colour x shape, with nothing held out.
    scene = sample_scene(image_rng, scene_config, label=colour * len(config.shapes) + shape)
    image, _ = render_scene(scene, image_rng, scene_config)
    return {
        "image": image,
        "text": _text_of(config, label, colour, text_rng),
        "image_id": f"{split}/{index:06d}",
        "label": label,
        "shape": shape,
        "material": label // len(config.shapes),
        "colour": colour,
        "heldout": label in config.held_out_labels,
        "scene": scene,
    }


def all_texts(
    config: MmShapesConfig = DEFAULT_CONFIG, split: str = "train"
) -> Iterator[tuple[int, str]]:
    """`(label, text)` of every example of `split`, identical to the stored ones, no pixels."""
    for index in range(config.split_sizes[split]):
        image_rng, text_rng = _rngs(config, split, index)
        label, colour = _draw_label(config, split, index, image_rng)
        yield label, _text_of(config, label, colour, text_rng)


def label_distribution(config: MmShapesConfig, split: str) -> np.ndarray:
    """`[num_materials, num_shapes]` probabilities of each class in `split`: uniform over the
    seen classes in train, the exact shares of the cycled labels in evaluation splits."""
    p = np.zeros(len(config.class_names))
    if split == "train":
        p[list(config.seen_labels)] = 1.0
    else:
        n = config.split_sizes[split]
        p += np.bincount(np.arange(n) % len(p), minlength=len(p))
    return (p / p.sum()).reshape(len(config.materials), len(config.shapes))


def chance_levels(config: MmShapesConfig = DEFAULT_CONFIG, split: str = "test") -> dict[str, float]:
    """Best top-1 of a classifier that sees one modality, knowing the label distribution.

    The image determines the shape and nothing else about the label; the text determines
    the material and nothing else. So the best image-only guess for each shape is its most
    frequent material, `sum_s max_m p(m, s)`, and the best text-only guess for each material
    its most frequent shape, `sum_m max_s p(m, s)`. Both together determine the label.
    Colour is independent of the label in both modalities and adds nothing.
    """
    p = label_distribution(config, split)
    return {
        "image_only": float(p.max(axis=0).sum()),
        "text_only": float(p.max(axis=1).sum()),
        "fused": 1.0,
        "uniform": 1.0 / len(config.class_names),
    }


class MmShapes(tfds.core.GeneratorBasedBuilder):
    """A shape in the image, a material in the text: image + text classification."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        DEFAULT_CONFIG,
        MmShapesConfig(
            name="smoke",
            num_train=480,
            num_validation=96,
            num_test=96,
            description="A seconds-long build for smoke tests.",
        ),
    ]
    builder_config: MmShapesConfig

    # tfds' own lookup of a packaged builder's file imports `importlib_resources`, which it
    # does not install (ModuleNotFoundError in download_and_prepare); tell it directly.
    code_path = epath.Path(__file__)

    def __init__(
        self,
        *,
        config: str | MmShapesConfig | None = None,
        file_format: str | None = None,
        **kwargs: Any,
    ):
        """Like any tfds builder; keyword arguments naming config fields override them.

        `MmShapes(config="default", num_train=5_000)` builds a config named
        `default_<hash of every field>`, so a changed knob never reuses stale data.
        """
        knobs = {k: kwargs.pop(k) for k in list(kwargs) if k in _KNOBS}
        if knobs:
            base = config if isinstance(config, MmShapesConfig) else None
            base = base or self.builder_configs[config or DEFAULT_CONFIG.name]
            config = dataclasses.replace(base, **knobs)  # normalised by __post_init__
            values = repr([getattr(config, k) for k in sorted(_KNOBS)])
            digest = hashlib.sha1(values.encode()).hexdigest()[:8]
            config = dataclasses.replace(config, name=f"{base.name}_{digest}")
        # array_record needs no TensorFlow and gives grain random access.
        super().__init__(config=config, file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        s = cfg.image_size
        held = ", ".join(f"{m} {sh}" for m, sh in cfg.held_out)
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Procedural shapes with product descriptions: the label pairs the shape, shown "
                "only by the image, with the material, given only by the text. Pairs held out "
                f"of train: {held}."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
                    "text": tfds.features.Text(),
                    "image_id": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=list(cfg.class_names)),
                    "shape": tfds.features.ClassLabel(names=list(cfg.shapes)),
                    "material": tfds.features.ClassLabel(names=[m.name for m in cfg.materials]),
                    "colour": tfds.features.ClassLabel(names=[c.name for c in cfg.colours]),
                    "heldout": tfds.features.Scalar(dtype=np.bool_),
                }
            ),
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
            del ex["scene"]
            yield index, {"image": buf.getvalue(), **ex}
