"""`vqa_shapes`: a built-in visual question answering dataset on `clip_shapes` scenes.

One to four coloured shapes on a textured background (the scenes and pixels of
`jaxmm.data.shapes`), each image with one question of each of seven types: `colour`,
`shape`, `size`, `position`, `exists`, `count` and `relation`, every answer one word of a
fixed vocabulary (`ANSWERS`). Like `clip_shapes` it tests compositional generalisation:
the 8 held-out colour-shape pairs never appear in a train image or question, and the
evaluation splits ask about them often, each question flagged `heldout` when one of those
pairs is named in it or decides its answer. See docs/vqa_dataset.md for the grammar, the
rules that keep every question unambiguous and the chance levels.

Every example is a pure function of `(config.seed, split, index)`: the random stream is
consumed in a fixed order (scene, questions, pixels), so `question_stats` and
`chance_levels` read the questions of a split without rendering a pixel.
"""

from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import functools
import hashlib
import io
import itertools
import re
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from jaxmm import cli
from jaxmm.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PAIRS,
    SHAPES,
    SPLITS,
    ClipShapesConfig,
    Colour,
    Scene,
    ShapeObject,
    render_scene,
    sample_scene,
)

QUESTION_TYPES = ("colour", "shape", "size", "position", "exists", "count", "relation")
SIZES = ("small", "large")
_MAX_SCENE_DRAWS = 1000  # redraws are rare (see `_draw`); this only stops a hopeless config


@dataclasses.dataclass(eq=False)
class VqaShapesConfig(tfds.core.BuilderConfig):
    """Knobs of the dataset. Keyword overrides passed to `VqaShapes` get a fresh config name.

    Attributes:
        image_size: Side of the square RGB images in pixels.
        colours: The named colours (`shapes.Colour` regions).
        shapes: Shape names, a subset of `shapes.SHAPES`.
        held_out: `(colour, shape)` pairs that no train image shows and no train question names.
        objects_per_image: Inclusive `(min, max)` objects per image, drawn uniformly.
        small_radius: Range of a "small" object's radius, as a fraction of `image_size`.
        large_radius: Range of a "large" object's radius; keep a gap to `small_radius`.
        backgrounds: Background textures, a subset of `shapes.BACKGROUNDS`.
        question_types: Types asked about each image, in record order.
        questions_per_type: Distinct questions of each type per image (fewer only when a
            scene has no more distinct unambiguous ones).
        heldout_scene_prob: Share of validation and test images that hold at least one
            object of a held-out pair; the others hold none.
        num_train: Train images.
        num_validation: Validation images.
        num_test: Test images.
        seed: Base seed; image `index` of `split` draws from `default_rng((seed, split_id, index))`.
    """

    image_size: int = 64
    colours: tuple[Colour, ...] = dataclasses.field(default=COLOURS, repr=False)
    shapes: tuple[str, ...] = SHAPES
    held_out: tuple[tuple[str, str], ...] = HELD_OUT_PAIRS
    objects_per_image: tuple[int, int] = (1, 4)
    # Four large objects (radius <= 12.8 px at 64 px) fit: about 4% of large draws in
    # four-object scenes are retried small, none are dropped.
    small_radius: tuple[float, float] = (0.09, 0.12)
    large_radius: tuple[float, float] = (0.16, 0.20)
    backgrounds: tuple[str, ...] = BACKGROUNDS
    question_types: tuple[str, ...] = QUESTION_TYPES
    questions_per_type: int = 1
    heldout_scene_prob: float = 0.5
    num_train: int = 20_000
    num_validation: int = 1_000
    num_test: int = 2_000
    seed: int = 0

    def __post_init__(self):
        # Normalise lists (from JSON or ml_collections) to hashable tuples.
        self.colours = tuple(Colour(*c) for c in self.colours)
        self.held_out = tuple(tuple(p) for p in self.held_out)
        for f in ("shapes", "backgrounds", "question_types", "objects_per_image"):
            setattr(self, f, tuple(getattr(self, f)))
        self.small_radius, self.large_radius = tuple(self.small_radius), tuple(self.large_radius)
        if bad := [t for t in self.question_types if t not in QUESTION_TYPES]:
            raise ValueError(f"unknown question_types {bad} in config {self.name!r}")
        if self.questions_per_type < 1:
            raise ValueError(f"questions_per_type must be >= 1, got {self.questions_per_type}")
        if not 0 <= self.heldout_scene_prob <= 1:
            raise ValueError(f"heldout_scene_prob must be in [0, 1], got {self.heldout_scene_prob}")
        if not 1 <= self.objects_per_image[0] <= self.objects_per_image[1]:
            raise ValueError(f"bad objects_per_image {self.objects_per_image} in {self.name!r}")
        if len(set(self.held_out)) >= len(self.colours) * len(self.shapes):
            raise ValueError(f"config {self.name!r} holds out every colour-shape pair")
        for k in range(self.objects_per_image[0], self.objects_per_image[1] + 1):
            self.scene_config("train", k)  # validates colours, shapes, backgrounds, held_out

    @property
    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}

    @functools.cached_property
    def _memo(self) -> dict[tuple, Any]:
        """What is derived from the fields once: scene configs and question rules."""
        return {}

    def scene_config(self, split: str, num_objects: int) -> ClipShapesConfig:
        """The `clip_shapes` config that draws this split's scenes of `num_objects` objects.

        Train scenes exclude the held-out pairs; evaluation scenes may hold any pair.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        key = ("scene", split == "train", num_objects)
        if key not in self._memo:
            self._memo[key] = ClipShapesConfig(
                name=f"{self.name}_scene",
                image_size=self.image_size,
                colours=self.colours,
                shapes=self.shapes,
                held_out=self.held_out if split == "train" else (),
                objects_per_image=(num_objects, num_objects),
                small_radius=self.small_radius,
                large_radius=self.large_radius,
                backgrounds=self.backgrounds,
            )
        return self._memo[key]


DEFAULT_CONFIG = VqaShapesConfig(name="default", description="1-4 objects, 7 questions an image.")
_KNOBS = frozenset(f.name for f in dataclasses.fields(VqaShapesConfig)) - frozenset(
    f.name for f in dataclasses.fields(tfds.core.BuilderConfig)
)


def answer_vocabulary(config: VqaShapesConfig = DEFAULT_CONFIG) -> tuple[str, ...]:
    """Every answer `config` can produce, in a stable order: yes/no, colours, shapes, sizes,
    positions, then counts "0".."max objects"."""
    counts = tuple(str(n) for n in range(config.objects_per_image[1] + 1))
    positions = ("top", "middle", "bottom", "left", "right")
    return (
        "yes",
        "no",
        *(c.name for c in config.colours),
        *config.shapes,
        *SIZES,
        *positions,
        *counts,
    )


ANSWERS = answer_vocabulary(DEFAULT_CONFIG)


class Question(NamedTuple):
    """One question: its text, its one answer (a word of the vocabulary), its type, and
    whether a held-out pair is named in it or decides its answer."""

    text: str
    answer: str
    type: str
    heldout: bool


# ----------------------------------------------------------------------------- geometry

# Three bands per axis with gaps between them, as in `shapes._vpos`: an object whose centre
# lies in a gap is never asked the three-way question, only the two-way (which half) one,
# and that only outside the central band [0.42, 0.58].
_BANDS = ((0.0, 0.38), (0.42, 0.58), (0.62, 1.0))
_HALF_GAP = 0.08


def _band(t: float) -> int | None:
    """0, 1 or 2 for a coordinate `t` in [0, 1] inside a band; None in a gap."""
    return next((i for i, (lo, hi) in enumerate(_BANDS) if lo <= t <= hi), None)


# Relation -> (coordinate, sign): "a left of b" means sign * (a.cx - b.cx) > margin.
_RELATIONS = {"left": ("cx", -1), "right": ("cx", 1), "above": ("cy", -1), "below": ("cy", 1)}


def _side(a: ShapeObject, b: ShapeObject, relation: str) -> bool | None:
    """Whether `a` is `relation` of `b` (compared by centres); None when too close to call.

    The margin is the larger radius: a relation holds only when each centre lies beyond
    the other object's extent along that axis.
    """
    coord, sign = _RELATIONS[relation]
    d = sign * (getattr(a, coord) - getattr(b, coord))
    margin = max(a.radius, b.radius)
    return True if d > margin else False if d < -margin else None


# ----------------------------------------------------------------------------- phrases

_SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
_NOUNS = ("object", "shape", "thing")
_PLURAL_NOUNS = ("objects", "shapes", "things")
_WHERE = {
    "left": "on the left",
    "right": "on the right",
    "above": "at the top",
    "below": "at the bottom",
}
_REL_WORDS = {
    "left": ("left of", "to the left of", "on the left side of"),
    "right": ("right of", "to the right of", "on the right side of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
_FRAMES = {
    "colour": (
        "what colour is the {}?",
        "what color is the {}?",
        "what is the colour of the {}?",
        "which colour is the {}?",
        "the {} is what colour?",
    ),
    "shape": (
        "what shape is the {}?",
        "what is the shape of the {}?",
        "which shape is the {}?",
        "what kind of shape is the {}?",
    ),
    "size": (
        "is the {} big or small?",
        "is the {} small or large?",
        "what size is the {}?",
        "how big is the {}?",
    ),
    "exists": (
        "is there {}?",
        "does the image contain {}?",
        "can you see {}?",
        "is there {} in the picture?",
    ),
    "exists_plural": ("are there any {}?", "are there any {} in the image?"),
    "count": (
        "how many {} are there?",
        "how many {} are in the image?",
        "how many {} can you see?",
        "what is the number of {}?",
    ),
    "relation": (
        "is the {} {} the {}?",
        "is the {} placed {} the {}?",
        "does the {} appear {} the {}?",
    ),
    "relation_any": ("is there {} {} the {}?", "are there any {} {} the {}?"),
}
# (axis, ways) -> (frames, answers by band or half).
_POSITION = {
    ("cy", 3): (
        (
            "is the {} at the top, in the middle or at the bottom?",
            "where is the {} vertically: top, middle or bottom?",
            "which part of the image is the {} in: top, middle or bottom?",
        ),
        ("top", "middle", "bottom"),
    ),
    ("cx", 3): (
        (
            "is the {} on the left, in the middle or on the right?",
            "where is the {} horizontally: left, middle or right?",
            "which part of the image is the {} in: left, middle or right?",
        ),
        ("left", "middle", "right"),
    ),
    ("cy", 2): (
        (
            "is the {} in the top half or the bottom half?",
            "is the {} nearer the top or the bottom?",
            "is the {} closer to the top or to the bottom?",
        ),
        ("top", "bottom"),
    ),
    ("cx", 2): (
        (
            "is the {} in the left half or the right half?",
            "is the {} nearer the left or the right?",
            "is the {} closer to the left or to the right?",
        ),
        ("left", "right"),
    ),
}


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[rng.integers(len(options))]


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


# A description is a tuple of (attribute, value) pairs over "size", "colour", "shape", in
# that order: `(("colour", "red"), ("shape", "star"))` reads "red star".
Description = tuple[tuple[str, str], ...]
_ATTRIBUTES = ("size", "colour", "shape")


def _matches(obj: ShapeObject, desc: Description) -> bool:
    return all(getattr(obj, attr) == value for attr, value in desc)


def _phrase(
    desc: Description, rng: np.random.Generator, plural: bool = False, nouns: Sequence[str] = _NOUNS
) -> str:
    """'small red star', 'red object', 'stars', ... (no article); `nouns` stand in for a
    missing shape."""
    values = dict(desc)
    words = [_pick(rng, _SIZE_WORDS[values["size"]])] if "size" in values else []
    words += [values["colour"]] if "colour" in values else []
    if "shape" in values:
        words.append(_plural(values["shape"]) if plural else values["shape"])
    else:
        words.append(_pick(rng, _PLURAL_NOUNS if plural else nouns))
    return " ".join(words)


def _descriptions(obj: ShapeObject, attributes: Sequence[str]) -> list[Description]:
    """Every non-empty description of `obj` that uses only `attributes`."""
    attrs = [a for a in _ATTRIBUTES if a in attributes]
    return [
        tuple((a, getattr(obj, a)) for a in subset)
        for n in range(1, len(attrs) + 1)
        for subset in itertools.combinations(attrs, n)
    ]


def _unique_descriptions(
    obj: ShapeObject, objects: Sequence[ShapeObject], attributes: Sequence[str]
) -> list[Description]:
    """Descriptions from `attributes` that fit `obj` and no other object."""
    return [
        d
        for d in _descriptions(obj, attributes)
        if not any(_matches(o, d) for o in objects if o is not obj)
    ]


def _located_descriptions(
    obj: ShapeObject, objects: Sequence[ShapeObject], attributes: Sequence[str]
) -> list[tuple[Description, str]]:
    """`(description, relation)` pairs that single `obj` out of the objects fitting the
    description by where it lies: 'the star on the left' when `obj` is clearly left of
    every other star. Used only when no plain description is unique."""
    out = []
    for desc in [(), *_descriptions(obj, attributes)]:
        rivals = [o for o in objects if o is not obj and _matches(o, desc)]
        if rivals:
            out += [(desc, r) for r in _RELATIONS if all(_side(obj, o, r) for o in rivals)]
    return out


# ----------------------------------------------------------------------------- questions


@dataclasses.dataclass(frozen=True)
class _Rules:
    """What a split may ask: the pairs a question may name, and which pairs are held out."""

    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    nameable: frozenset[tuple[str, str]]
    held_out: frozenset[tuple[str, str]]
    # P(yes) of the "is there a ... left of the X?" form in scenes of several objects. A
    # single-object scene can only be asked that form and its answer there is always "no";
    # this brings the form back to half "yes" over a split (see `_make_rules`).
    any_relation_yes: float

    def held(self, *objects: ShapeObject) -> bool:
        return any((o.colour, o.shape) in self.held_out for o in objects)


_RELATION_PAIR_SHARE = 0.5  # share of "is the A left of the B?" in multi-object scenes


def _rules(config: VqaShapesConfig, split: str) -> _Rules:
    if ("rules", split) not in config._memo:
        config._memo["rules", split] = _make_rules(config, split)
    return config._memo["rules", split]


def _make_rules(config: VqaShapesConfig, split: str) -> _Rules:
    colours, shapes = tuple(c.name for c in config.colours), config.shapes
    held_out = frozenset(config.held_out)
    pairs = frozenset(itertools.product(colours, shapes))
    lo, hi = config.objects_per_image
    single = 1 / (hi - lo + 1) if lo == 1 else 0.0  # share of single-object scenes
    multi_any = (1 - single) * (1 - _RELATION_PAIR_SHARE)  # share asked the "any" form there
    yes = min(1.0, 0.5 * (single + multi_any) / multi_any) if multi_any else 0.5
    return _Rules(
        colours=colours,
        shapes=shapes,
        nameable=pairs - held_out if split == "train" else pairs,
        held_out=held_out,
        any_relation_yes=yes,
    )


def _nameable(desc: Description, rules: _Rules) -> bool:
    values = dict(desc)
    return (
        "colour" not in values
        or "shape" not in values
        or ((values["colour"], values["shape"]) in rules.nameable)
    )


def _names_held_out(desc: Description, rules: _Rules) -> bool:
    values = dict(desc)
    return (values.get("colour"), values.get("shape")) in rules.held_out


def _refer(
    objects: Sequence[ShapeObject],
    attributes: Sequence[str],
    rng: np.random.Generator,
    nouns: Sequence[str] = _NOUNS,
) -> tuple[ShapeObject, str] | None:
    """A random object and a phrase that picks it out, never naming an attribute outside
    `attributes`, else 'the star on the left' (a location picks it out of the matches)."""
    options = [(o, _unique_descriptions(o, objects, attributes)) for o in objects]
    options = [(o, [(d, None) for d in ds]) for o, ds in options if ds]
    if not options:
        options = [(o, _located_descriptions(o, objects, attributes)) for o in objects]
        options = [(o, ds) for o, ds in options if ds]
    if not options:
        return None
    obj, descs = _pick(rng, options)
    desc, where = _pick(rng, descs)
    phrase = _phrase(desc, rng, nouns=nouns)
    return obj, phrase if where is None else f"{phrase} {_WHERE[where]}"


def _ask_attribute(
    kind: str, objects: Sequence[ShapeObject], rng: np.random.Generator, rules: _Rules
) -> Question | None:
    """colour, shape or size of an object described by the two other attributes."""
    # "what shape is the red shape?" reads oddly: the shape question says "one" instead.
    nouns = ("object", "thing", "one") if kind == "shape" else _NOUNS
    found = _refer(objects, [a for a in _ATTRIBUTES if a != kind], rng, nouns)
    if found is None:
        return None
    obj, phrase = found
    text = _pick(rng, _FRAMES[kind]).format(phrase)
    return Question(text, getattr(obj, kind), kind, rules.held(obj))


def _ask_position(
    objects: Sequence[ShapeObject], rng: np.random.Generator, rules: _Rules, image_size: int
) -> Question | None:
    """Which band (three-way) or half (two-way) of one axis a named object lies in."""
    options = []
    for obj in objects:
        if not (descs := _unique_descriptions(obj, objects, _ATTRIBUTES)):
            continue
        for coord in ("cy", "cx"):
            t = getattr(obj, coord) / image_size
            if (band := _band(t)) is not None:
                options.append((obj, descs, coord, 3, band))
            if abs(t - 0.5) > _HALF_GAP:
                options.append((obj, descs, coord, 2, int(t > 0.5)))
    if not options:
        return None
    obj, descs, coord, ways, index = _pick(rng, options)
    frames, answers = _POSITION[coord, ways]
    text = _pick(rng, frames).format(_phrase(_pick(rng, descs), rng))
    return Question(text, answers[index], "position", rules.held(obj))


def _ask_exists(
    objects: Sequence[ShapeObject], rng: np.random.Generator, rules: _Rules
) -> Question | None:
    """'is there a (small) red star?': yes or no with equal odds."""
    attributes = _ATTRIBUTES if rng.random() < 0.3 else ("colour", "shape")
    present = {tuple((a, getattr(o, a)) for a in attributes) for o in objects}
    if rng.random() < 0.5:
        desc = _pick(rng, sorted(d for d in present if _nameable(d, rules)))
        answer = "yes"
    else:
        values = [SIZES if a == "size" else getattr(rules, a + "s") for a in attributes]
        absent = [
            d
            for d in (tuple(zip(attributes, v, strict=True)) for v in itertools.product(*values))
            if d not in present and _nameable(d, rules)
        ]
        # Half the time a near miss: it differs from a present object in one attribute.
        near = [
            d
            for d in absent
            if any(sum(a != b for a, b in zip(d, p, strict=True)) == 1 for p in present)
        ]
        desc, answer = _pick(rng, near if near and rng.random() < 0.5 else absent), "no"
    if rng.random() < 0.3:
        text = _pick(rng, _FRAMES["exists_plural"]).format(_phrase(desc, rng, plural=True))
    else:
        text = _pick(rng, _FRAMES["exists"]).format(_with_article(_phrase(desc, rng)))
    return Question(text, answer, "exists", _names_held_out(desc, rules))


def _ask_count(
    objects: Sequence[ShapeObject], rng: np.random.Generator, rules: _Rules
) -> Question | None:
    """'how many red objects are there?': the count is drawn first, uniformly over the
    counts the scene can give, which spreads answers beyond 0 and 1."""
    values = {"size": SIZES, "colour": rules.colours, "shape": rules.shapes}
    by_count = collections.defaultdict(list)
    for attributes in (
        (),
        ("size",),
        ("colour",),
        ("shape",),
        ("colour", "shape"),
        ("size", "shape"),
    ):
        for v in itertools.product(*(values[a] for a in attributes)):
            desc = tuple(zip(attributes, v, strict=True))
            if _nameable(desc, rules):
                by_count[sum(_matches(o, desc) for o in objects)].append(desc)
    count = _pick(rng, sorted(by_count))
    desc = _pick(rng, by_count[count])
    counted = [o for o in objects if _matches(o, desc)]
    text = _pick(rng, _FRAMES["count"]).format(_phrase(desc, rng, plural=True))
    return Question(text, str(count), "count", rules.held(*counted) or _names_held_out(desc, rules))


def _ask_relation(
    objects: Sequence[ShapeObject], rng: np.random.Generator, rules: _Rules
) -> Question | None:
    """'is the red star left of the blue square?' or 'is there a circle above the star?'."""
    named = [(o, ds) for o in objects if (ds := _unique_descriptions(o, objects, _ATTRIBUTES))]
    if not named:
        return None
    pairs = {True: [], False: []}
    for (a, a_descs), (b, b_descs) in itertools.permutations(named, 2):
        for relation in _RELATIONS:
            if (holds := _side(a, b, relation)) is not None:
                pairs[holds].append((a, a_descs, b, b_descs, relation))
    # Every true "a left of b" has a false "a right of b", so this form is half "yes".
    if pairs[True] and rng.random() < _RELATION_PAIR_SHARE:
        holds = bool(rng.random() < 0.5)
        a, a_descs, b, b_descs, relation = _pick(rng, pairs[holds])
        phrase_a, phrase_b = (_phrase(_pick(rng, ds), rng) for ds in (a_descs, b_descs))
        text = _pick(rng, _FRAMES["relation"]).format(
            phrase_a, _pick(rng, _REL_WORDS[relation]), phrase_b
        )
        return Question(text, "yes" if holds else "no", "relation", rules.held(a, b))
    return _ask_any_relation(objects, named, rng, rules)


def _ask_any_relation(
    objects: Sequence[ShapeObject],
    named: list[tuple[ShapeObject, list[Description]]],
    rng: np.random.Generator,
    rules: _Rules,
) -> Question | None:
    """'is there a circle above the star?': yes when an object fitting the description is
    clearly above the star, no when every such object is clearly not (or there is none)."""
    # What is looked for: anything, a shape, a colour or a pair; grouped by the objects
    # that fit, so that each group is judged once.
    looked_for = [(), *((("shape", s),) for s in rules.shapes)]
    looked_for += [(("colour", c),) for c in rules.colours]
    looked_for += [(("colour", c), ("shape", s)) for c, s in sorted(rules.nameable)]
    groups = collections.defaultdict(list)
    for desc in looked_for:
        groups[tuple(i for i, o in enumerate(objects) if _matches(o, desc))].append(desc)
    options = {True: [], False: []}
    for (b, b_descs), relation, fit in itertools.product(named, _RELATIONS, groups):
        fits = [objects[i] for i in fit if objects[i] is not b]
        sides = {_side(o, b, relation) for o in fits}
        if True in sides:
            options[True].append((b, b_descs, relation, fit, fits))
        elif None not in sides:
            options[False].append((b, b_descs, relation, fit, fits))
    holds = bool(rng.random() < rules.any_relation_yes) if options[True] else False
    b, b_descs, relation, fit, fits = _pick(rng, options[holds])
    desc = _pick(rng, groups[fit])
    plural = rng.random() < 0.3
    if desc:
        what = _phrase(desc, rng, plural=plural)
        what = what if plural else _with_article(what)
    else:
        what = _pick(rng, ("other objects",) if plural else ("anything", "an object", "any shape"))
    frame = _FRAMES["relation_any"][int(plural)]
    text = frame.format(what, _pick(rng, _REL_WORDS[relation]), _phrase(_pick(rng, b_descs), rng))
    held = rules.held(b, *fits) or _names_held_out(desc, rules)
    return Question(text, "yes" if holds else "no", "relation", held)


def make_questions(
    scene: Scene, rng: np.random.Generator, config: VqaShapesConfig, split: str
) -> list[Question] | None:
    """`config.questions_per_type` distinct questions of each type in `config.question_types`.

    Returns:
        The questions in type order, or None when some type has no unambiguous question
        about `scene` (the caller draws another scene).
    """
    rules, objects = _rules(config, split), scene.objects
    askers = {
        "colour": functools.partial(_ask_attribute, "colour"),
        "shape": functools.partial(_ask_attribute, "shape"),
        "size": functools.partial(_ask_attribute, "size"),
        "position": functools.partial(_ask_position, image_size=config.image_size),
        "exists": _ask_exists,
        "count": _ask_count,
        "relation": _ask_relation,
    }
    questions = []
    for kind in config.question_types:
        texts: dict[str, Question] = {}
        for _ in range(10 * config.questions_per_type):
            if (q := askers[kind](objects, rng, rules)) is None:
                return None
            texts.setdefault(q.text, q)
            if len(texts) == config.questions_per_type:
                break
        questions += texts.values()
    return questions


def mirror_text(text: str) -> str:
    """`text` with 'left' and 'right' swapped: the question and answer of a horizontally
    flipped image."""
    return re.sub(r"\b(left|right)\b", lambda m: "right" if m[1] == "left" else "left", text)


# ----------------------------------------------------------------------------- examples


def _example_rng(config: VqaShapesConfig, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng((config.seed, SPLITS.index(split), index))


def _draw(
    config: VqaShapesConfig, split: str, index: int
) -> tuple[np.random.Generator, Scene, list[Question]]:
    """The scene and questions of `split[index]`, and the generator left ready for pixels.

    Evaluation images first decide whether to hold a held-out-pair object, then redraw the
    scene until it does (or does not); the object count is drawn before that, so both
    kinds of image have the same count distribution. A scene on which some question type
    has no unambiguous question is redrawn too.
    """
    rng = _example_rng(config, split, index)
    lo, hi = config.objects_per_image
    k = int(rng.integers(lo, hi + 1))
    scene_config = config.scene_config(split, k)
    want_held = None
    if split != "train" and config.held_out:
        want_held = bool(rng.random() < config.heldout_scene_prob)
    held_out = frozenset(config.held_out)
    for _ in range(_MAX_SCENE_DRAWS):
        scene = sample_scene(rng, scene_config)
        held = any((o.colour, o.shape) in held_out for o in scene.objects)
        if want_held is not None and held != want_held:
            continue
        if (questions := make_questions(scene, rng, config, split)) is not None:
            return rng, scene, questions
    raise ValueError(
        f"config {config.name!r}: no scene of {k} objects in {_MAX_SCENE_DRAWS} draws allows "
        f"an unambiguous question of every type {config.question_types}"
    )


def generate_example(config: VqaShapesConfig, split: str, index: int) -> dict[str, Any]:
    """The example stored at `split[index]`, deterministic in `(config, split, index)`.

    Returns:
        The stored features (`image` a uint8 array `[S, S, 3]`, text as `str`) plus the
        `scene`, for tests and pictures.
    """
    rng, scene, questions = _draw(config, split, index)
    image, _ = render_scene(scene, rng, config.scene_config(split, len(scene.objects)))
    return {
        "image": image,
        "image_id": f"{split}/{index:06d}",
        "questions": [q.text for q in questions],
        "answers": [q.answer for q in questions],  # one accepted answer each
        "question_types": [q.type for q in questions],
        "heldout": [q.heldout for q in questions],
        "num_objects": len(scene.objects),
        "scene": scene,
    }


def all_questions(
    config: VqaShapesConfig = DEFAULT_CONFIG, split: str = "train"
) -> Iterator[Question]:
    """Every question of `split`, identical to the stored ones, without rendering pixels."""
    for index in range(config.split_sizes[split]):
        yield from _draw(config, split, index)[2]


@dataclasses.dataclass
class QuestionStats:
    """Answer counts of one split, by question type."""

    answers: dict[str, collections.Counter]
    heldout: collections.Counter  # type -> questions flagged held-out


def question_stats(config: VqaShapesConfig = DEFAULT_CONFIG, split: str = "test") -> QuestionStats:
    """Counts the answers of each question type in `split` (no pixels are rendered)."""
    answers = {t: collections.Counter() for t in config.question_types}
    heldout = collections.Counter()
    for q in all_questions(config, split):
        answers[q.type][q.answer] += 1
        heldout[q.type] += q.heldout
    return QuestionStats(answers, heldout)


def chance_levels(
    config: VqaShapesConfig = DEFAULT_CONFIG, split: str = "test"
) -> dict[str, float]:
    """Accuracy of always giving the most common answer of each type in `split`.

    Returns:
        `{type: accuracy}` for each question type, plus `"overall"`: the accuracy over all
        questions of answering each with its type's most common answer.
    """
    counts = question_stats(config, split).answers
    levels = {t: max(c.values()) / c.total() for t, c in counts.items()}
    levels["overall"] = sum(max(c.values()) for c in counts.values()) / sum(
        c.total() for c in counts.values()
    )
    return levels


# ----------------------------------------------------------------------------- builder


class VqaShapes(tfds.core.GeneratorBasedBuilder):
    """Questions and one-word answers about coloured shapes on textured backgrounds."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        DEFAULT_CONFIG,
        VqaShapesConfig(
            name="smoke",
            num_train=240,
            num_validation=48,
            num_test=48,
            description="A seconds-long build for smoke tests.",
        ),
    ]
    builder_config: VqaShapesConfig

    # tfds' own lookup of a packaged builder's file imports `importlib_resources`, which
    # it does not install; tell it directly.
    code_path = epath.Path(__file__)

    def __init__(
        self,
        *,
        config: str | VqaShapesConfig | None = None,
        file_format: str | None = None,
        **kwargs: Any,
    ):
        """Like any tfds builder; keyword arguments naming config fields override them.

        `VqaShapes(config="default", num_train=5_000)` builds a config named
        `default_<hash of every field>`, so a changed knob never reuses stale data.
        """
        knobs = {k: kwargs.pop(k) for k in list(kwargs) if k in _KNOBS}
        if knobs:
            base = config if isinstance(config, VqaShapesConfig) else None
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
        held = ", ".join(f"{c} {sh}" for c, sh in cfg.held_out)
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Procedural coloured shapes on textured backgrounds with questions about "
                f"colour, shape, size, position, existence, counts and relations. Colour x "
                f"shape combinations absent from train: {held}."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
                    "image_id": tfds.features.Text(),
                    "questions": tfds.features.Sequence(tfds.features.Text()),
                    # Each question's accepted answers joined by "\n" (here exactly one).
                    "answers": tfds.features.Sequence(tfds.features.Text()),
                    "question_types": tfds.features.Sequence(tfds.features.Text()),
                    "heldout": tfds.features.Sequence(tfds.features.Scalar(dtype=np.bool_)),
                    "num_objects": tfds.features.Scalar(dtype=np.int32),
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


# ----------------------------------------------------------------------------- command


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or key not in _KNOBS:
        raise ValueError(f"--set {text!r}: expected FIELD=VALUE with FIELD one of {sorted(_KNOBS)}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a bare word, e.g. a config name


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Prints question counts and chance levels of one split; returns the chance levels."""
    parser = argparse.ArgumentParser(
        description="Question counts and majority-answer chance levels of vqa_shapes, per "
        "question type (computed without rendering images)."
    )
    parser.add_argument("--config", default="default", help="smoke or default (the default)")
    parser.add_argument("--split", default="test", choices=SPLITS)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field, e.g. --set num_test=500 --set objects_per_image=(2,4)",
    )
    args = parser.parse_args(argv)
    configs = {c.name: c for c in VqaShapes.BUILDER_CONFIGS}
    if args.config not in configs:
        raise ValueError(f"--config={args.config}: expected one of {sorted(configs)}")
    config = dataclasses.replace(configs[args.config], **dict(map(_override, args.set)))
    stats = question_stats(config, args.split)
    levels = chance_levels(config, args.split)
    total = sum(c.total() for c in stats.answers.values())
    print(f"vqa_shapes/{config.name} {args.split}: {config.split_sizes[args.split]:,} images")
    print(f"{'type':<10}{'questions':>10}{'held-out':>10}  {'majority answer':<16}{'chance':>7}")
    for kind, counts in stats.answers.items():
        answer = counts.most_common(1)[0][0]
        print(
            f"{kind:<10}{counts.total():>10,}{stats.heldout[kind]:>10,}  {answer:<16}"
            f"{levels[kind]:>7.1%}"
        )
    held = sum(stats.heldout.values())
    print(f"{'overall':<10}{total:>10,}{held:>10,}  {'':<16}{levels['overall']:>7.1%}")
    return levels


if __name__ == "__main__":
    with cli.one_line_errors():
        main()
