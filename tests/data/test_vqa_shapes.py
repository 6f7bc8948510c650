"""The built-in `vqa_shapes` dataset: record layout, determinism, and answers that a small
parser of the questions re-derives from the scene's objects.

The parser below knows the question grammar (which words name colours, shapes, sizes and
relations) but none of the generator's code: it finds the objects a question is about by
scanning the scene, and computes each answer from their attributes and centres with the
thresholds stated in docs/vqa_dataset.md.
"""

import collections
import dataclasses
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxmm.data import vqa_shapes as vqa
from jaxmm.data.shapes import COLOUR_NAMES, HELD_OUT_PAIRS, SHAPES

KEYS = {"image", "image_id", "questions", "answers", "question_types", "heldout", "num_objects"}
TYPES = ["colour", "shape", "size", "position", "exists", "count", "relation"]


def _text(value) -> str:
    # Real data gives bytes, mock_data gives str.
    return value.decode() if isinstance(value, bytes) else str(value)


def _build(data_dir) -> tfds.core.DatasetBuilder:
    builder = vqa.VqaShapes(config="smoke", data_dir=data_dir)
    builder.download_and_prepare()
    return builder


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def records(builder) -> dict[str, list[dict]]:
    out = {}
    for split in ("train", "validation", "test"):
        source = builder.as_data_source(split)
        out[split] = [source[i] for i in range(len(source))]
    return out


@pytest.fixture(scope="module")
def test_stats():
    return vqa.question_stats(vqa.DEFAULT_CONFIG, "test")  # 2,000 images, no pixels


# ----------------------------------------------------------------------------- the parser

PLURALS = {"circles": "circle", "squares": "square", "triangles": "triangle"}
PLURALS |= {"diamonds": "diamond", "stars": "star", "crosses": "cross"}
SIZE_WORDS = {"small": "small", "little": "small", "large": "large", "big": "large"}
NOUNS = {"object", "shape", "thing", "one", "objects", "shapes", "things"}
ANYTHING = {"anything", "an object", "any shape", "other objects"}
LOCATIONS = {
    "on the left": "left",
    "on the right": "right",
    "at the top": "up",
    "at the bottom": "down",
}
RELATION_WORDS = {
    "left": ["to the left of", "on the left side of", "left of"],
    "right": ["to the right of", "on the right side of", "right of"],
    "up": ["above", "over"],
    "down": ["below", "under", "beneath"],
}
RELATION_RE = "|".join(w for ws in RELATION_WORDS.values() for w in ws)
SIZE = 64


def relation_of(word: str) -> str:
    return next(r for r, ws in RELATION_WORDS.items() if word in ws)


def clearly(a, b, relation: str) -> bool | None:
    """a is `relation` of b by centres, beyond the larger radius; None when too close."""
    d = {"left": b.cx - a.cx, "right": a.cx - b.cx, "up": b.cy - a.cy, "down": a.cy - b.cy}
    d = d[relation]
    margin = max(a.radius, b.radius)
    return True if d > margin else False if d < -margin else None


def attributes(phrase: str) -> dict:
    """'little red star' -> {'size': 'small', 'colour': 'red', 'shape': 'star'}."""
    words = re.sub(r"^(an?|the) ", "", phrase).split()
    out = {}
    for w in words:
        if w in SIZE_WORDS:
            out["size"] = SIZE_WORDS[w]
        elif w in COLOUR_NAMES:
            out["colour"] = w
        elif w in SHAPES or w in PLURALS:
            out["shape"] = PLURALS.get(w, w)
        else:
            assert w in NOUNS, (w, phrase)
    return out


def fits(objects, attrs: dict) -> list:
    return [o for o in objects if all(getattr(o, k) == v for k, v in attrs.items())]


def refer(objects, phrase: str):
    """The one object `phrase` picks out; fails when it picks out none or several."""
    location = next((loc for loc in LOCATIONS if phrase.endswith(" " + loc)), None)
    if location is None:
        (target,) = fits(objects, attributes(phrase))
        return target
    matches = fits(objects, attributes(phrase[: -len(location) - 1]))
    relation = LOCATIONS[location]
    (target,) = [m for m in matches if all(clearly(m, o, relation) for o in matches if o is not m)]
    # A location is only needed when several objects fit the words.
    assert len(matches) >= 2
    return target


def band(t: float, names) -> str:
    """The three-way answer for t in [0, 1], bands [0, .38], [.42, .58], [.62, 1]."""
    assert not (0.38 < t < 0.42 or 0.58 < t < 0.62), t
    return names[0] if t <= 0.38 else names[2] if t >= 0.62 else names[1]


def named_held_out(text: str) -> bool:
    return any(re.search(rf"\b{c} ({s}|{s}s|{s}es)\b", text) for c, s in HELD_OUT_PAIRS)


def held(*objects) -> bool:
    return any((o.colour, o.shape) in HELD_OUT_PAIRS for o in objects)


def derive(question: str, kind: str, objects) -> tuple[str, bool]:
    """The answer to `question` about `objects`, and whether it concerns a held-out pair."""
    q = question
    if kind in ("colour", "shape", "size"):
        pattern = {
            "colour": r"(?:what colou?r is|what is the colour of|which colour is) the (.+)\?"
            r"|the (.+) is what colour\?",
            "shape": r"(?:what shape is|what is the shape of|which shape is|what kind of shape is)"
            r" the (.+)\?",
            "size": r"is the (.+) (?:big or small|small or large)\?|(?:what size is|how big is)"
            r" the (.+)\?",
        }[kind]
        m = re.fullmatch(pattern, q)
        target = refer(objects, next(g for g in m.groups() if g))
        return getattr(target, kind), held(target)
    if kind == "position":
        m = re.fullmatch(
            r"(?:is|where is|which part of the image is) the (.+?) (?:at the top,"
            r"|on the (?:left|right),|vertically|horizontally|in:|in the (?:top|left|right) half"
            r"|nearer|closer).*\?",
            q,
        )
        target = refer(objects, m[1])
        vertical = "top" in q
        t = (target.cy if vertical else target.cx) / SIZE
        names = ("top", "middle", "bottom") if vertical else ("left", "middle", "right")
        if "middle" in q:
            return band(t, names), held(target)
        assert abs(t - 0.5) > 0.08, (q, t)
        return names[0] if t < 0.5 else names[2], held(target)
    if kind == "exists":
        m = re.fullmatch(
            r"(?:is there|does the image contain|can you see|are there any) (.+?)"
            r"(?: in the picture| in the image)?\?",
            q,
        )
        attrs = attributes(m[1])
        assert {"colour", "shape"} <= set(attrs)  # exists asks about colour-shape pairs
        return ("yes" if fits(objects, attrs) else "no"), named_held_out(q)
    if kind == "count":
        m = re.fullmatch(
            r"(?:how many|what is the number of) (.+?)(?: are there| are in the image"
            r"| can you see)?\?",
            q,
        )
        counted = fits(objects, attributes(m[1]))
        return str(len(counted)), held(*counted) or named_held_out(q)
    assert kind == "relation"
    m = re.fullmatch(rf"(?:is|does) the (.+?) (?:placed |appear )?({RELATION_RE}) the (.+)\?", q)
    if m:
        a, b = refer(objects, m[1]), refer(objects, m[3])
        holds = clearly(a, b, relation_of(m[2]))
        assert holds is not None and a is not b, q
        return ("yes" if holds else "no"), held(a, b)
    m = re.fullmatch(rf"(?:is there|are there any) (.+?) ({RELATION_RE}) the (.+)\?", q)
    b = refer(objects, m[3])
    attrs = {} if m[1] in ANYTHING or m[1] == "objects" else attributes(m[1])
    others = [o for o in fits(objects, attrs) if o is not b]
    sides = {clearly(o, b, relation_of(m[2])) for o in others}
    if True in sides:
        return "yes", held(b, *others) or named_held_out(q)
    assert None not in sides, q  # "no" only when no candidate is too close to call
    return "no", held(b, *others) or named_held_out(q)


def mirrored(scene) -> list:
    """The scene's objects flipped left to right."""
    return [dataclasses.replace(o, cx=SIZE - o.cx) for o in scene.objects]


# ----------------------------------------------------------------------------- tests


def test_record_layout(builder, records):
    features = builder.info.features
    assert set(features) == KEYS
    assert isinstance(features["image"], tfds.features.Image)
    assert features["image"].shape == (64, 64, 3)
    assert features["image"].encoding_format == "png"
    for key in ("questions", "answers", "question_types", "heldout"):
        assert isinstance(features[key], tfds.features.Sequence), key
    assert features["heldout"].feature.np_dtype == np.bool_
    assert features["num_objects"].np_dtype == np.int32
    assert {s: len(r) for s, r in records.items()} == {"train": 240, "validation": 48, "test": 48}
    for split, rows in records.items():
        for ex in rows:
            assert set(ex) == KEYS
            assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
            assert re.fullmatch(rf"{split}/\d{{6}}", _text(ex["image_id"]))
            assert [_text(t) for t in ex["question_types"]] == TYPES
            assert len(ex["questions"]) == len(ex["answers"]) == len(ex["heldout"]) == 7
            assert all("\n" not in _text(a) for a in ex["answers"])  # exactly one answer each
            assert 1 <= ex["num_objects"] <= 4


def test_stored_records_are_the_generated_ones(builder, records):
    for split in ("train", "test"):
        for ex in records[split][:5]:
            index = int(_text(ex["image_id"]).split("/")[1])
            expected = vqa.generate_example(builder.builder_config, split, index)
            np.testing.assert_array_equal(ex["image"], expected["image"])  # PNG is lossless
            assert [_text(q) for q in ex["questions"]] == expected["questions"]
            assert [_text(a) for a in ex["answers"]] == expected["answers"]
            assert [bool(h) for h in ex["heldout"]] == expected["heldout"]
            assert ex["num_objects"] == expected["num_objects"]


def test_deterministic_and_seeded():
    config = vqa.DEFAULT_CONFIG
    a, b = (vqa.generate_example(config, "validation", 3) for _ in range(2))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["questions"] == b["questions"] and a["answers"] == b["answers"]
    other = vqa.generate_example(dataclasses.replace(config, seed=1), "validation", 3)
    assert other["questions"] != a["questions"]
    assert not np.array_equal(other["image"], a["image"])


def test_rebuild_is_byte_identical(builder, tmp_path):
    again = _build(tmp_path)
    files = sorted(p.name for p in builder.data_path.glob("*.array_record*"))
    assert len(files) == 3
    for name in files:
        assert (builder.data_path / name).read_bytes() == (again.data_path / name).read_bytes()


@pytest.mark.parametrize("split", ["train", "test"])
def test_answers_follow_from_the_scene(split):
    located = collections.Counter()  # references like "the star on the left"
    for index in range(150):
        ex = vqa.generate_example(vqa.DEFAULT_CONFIG, split, index)
        objects = ex["scene"].objects
        assert ex["num_objects"] == len(objects)
        for q, a, kind, flag in zip(
            ex["questions"], ex["answers"], ex["question_types"], ex["heldout"], strict=True
        ):
            assert derive(q, kind, objects) == (a, flag), (index, q, a, flag, objects)
            if kind in ("colour", "shape", "size"):
                located[kind] += bool(re.search(r" (on the|at the) \w+\?$", q))
    assert located.total() > 0  # the fallback for look-alike objects was met and checked


def test_mirrored_questions_fit_the_mirrored_scene():
    for index in range(100):
        ex = vqa.generate_example(vqa.DEFAULT_CONFIG, "test", index)
        objects = mirrored(ex["scene"])
        for q, a, kind in zip(ex["questions"], ex["answers"], ex["question_types"], strict=True):
            answer, _ = derive(vqa.mirror_text(q), kind, objects)
            assert answer == vqa.mirror_text(a), (q, a)
    assert vqa.mirror_text("is the star left of the cross?") == "is the star right of the cross?"


def test_answer_vocabulary(records, test_stats):
    assert vqa.ANSWERS == vqa.answer_vocabulary()
    assert vqa.ANSWERS[:2] == ("yes", "no") and vqa.ANSWERS[-5:] == ("0", "1", "2", "3", "4")
    assert set(COLOUR_NAMES) | set(SHAPES) | {"small", "large", "middle"} <= set(vqa.ANSWERS)
    assert len(vqa.ANSWERS) == len(set(vqa.ANSWERS)) == 2 + 8 + 6 + 2 + 5 + 5
    stored = {_text(a) for rows in records.values() for ex in rows for a in ex["answers"]}
    generated = {a for counts in test_stats.answers.values() for a in counts}
    assert stored <= set(vqa.ANSWERS) and generated <= set(vqa.ANSWERS)
    wide = dataclasses.replace(vqa.DEFAULT_CONFIG, objects_per_image=(2, 6))
    assert vqa.answer_vocabulary(wide)[-7:] == tuple("0123456")


def test_train_never_shows_or_names_a_held_out_pair():
    config = dataclasses.replace(vqa.DEFAULT_CONFIG, num_train=600)
    for index in range(config.num_train):
        ex = vqa.generate_example(config, "train", index)
        assert not held(*ex["scene"].objects), index
        assert not any(ex["heldout"])
        assert not any(named_held_out(q) for q in ex["questions"]), ex["questions"]


def test_test_split_asks_about_held_out_pairs(test_stats):
    # A few hundred held-out questions of each type at the default size (2,000 images).
    assert all(test_stats.heldout[t] >= 300 for t in TYPES), test_stats.heldout


@pytest.mark.parametrize("prob", [0.1, 0.9])
def test_heldout_scene_prob_sets_the_share_of_held_out_images(prob):
    # Without it, about 35% of images would hold a held-out pair (1 - mean of (5/6)^k).
    config = dataclasses.replace(vqa.DEFAULT_CONFIG, heldout_scene_prob=prob)
    scenes = [vqa.generate_example(config, "validation", i)["scene"] for i in range(200)]
    assert abs(np.mean([held(*s.objects) for s in scenes]) - prob) < 0.08


def test_yes_no_balance_and_count_spread(test_stats):
    for kind in ("exists", "relation", "size"):
        counts = test_stats.answers[kind]
        assert abs(counts[counts.most_common(1)[0][0]] / counts.total() - 0.5) < 0.03, counts
    counts = test_stats.answers["count"]
    assert set(counts) == set("01234") and min(counts.values()) > 0.05 * counts.total(), counts


def test_chance_levels_match_the_stored_answers(records):
    levels = vqa.chance_levels(vqa.VqaShapes.builder_configs["smoke"], "test")
    by_type = collections.defaultdict(collections.Counter)
    for ex in records["test"]:
        for a, t in zip(ex["answers"], ex["question_types"], strict=True):
            by_type[_text(t)][_text(a)] += 1
    for kind, counts in by_type.items():
        assert levels[kind] == pytest.approx(max(counts.values()) / 48), kind
    majority = sum(max(c.values()) for c in by_type.values())
    assert levels["overall"] == pytest.approx(majority / (48 * 7))


def test_phrasings_are_varied():
    templates = collections.defaultdict(set)
    words = set(COLOUR_NAMES) | set(SHAPES) | set(PLURALS) | set(SIZE_WORDS) | NOUNS
    for q in vqa.all_questions(dataclasses.replace(vqa.DEFAULT_CONFIG, num_train=300)):
        masked = " ".join("X" if w in words else w for w in re.findall(r"[\w']+|\?", q.text))
        templates[q.type].add(re.sub(r"(X )+X", "X", masked))
    assert all(len(templates[t]) >= 3 for t in TYPES), {t: len(v) for t, v in templates.items()}


def test_command_prints_the_table(capsys):
    levels = vqa.main(["--config", "smoke", "--split", "validation", "--set", "num_validation=24"])
    out = capsys.readouterr().out
    assert "24 images" in out
    for kind in TYPES:
        assert re.search(rf"^{kind} +24 ", out, re.M), out
    assert re.search(r"^overall +168 ", out, re.M)
    assert set(levels) == {*TYPES, "overall"}
    with pytest.raises(SystemExit) as exit_info:
        vqa.main(["--help"])
    assert exit_info.value.code == 0
    with pytest.raises(ValueError, match="num_tset"):
        vqa.main(["--set", "num_tset=5"])


def test_config_checks_and_override_names(tmp_path):
    a = vqa.VqaShapes(config="smoke", data_dir=tmp_path, objects_per_image=[1, 2])
    b = vqa.VqaShapes(config="smoke", data_dir=tmp_path, objects_per_image=(1, 2))
    assert a.builder_config.name == b.builder_config.name != "smoke"
    with pytest.raises(ValueError, match="question_types"):
        vqa.VqaShapesConfig(name="bad", question_types=("colour", "colur"))
    with pytest.raises(ValueError, match="unknown"):
        vqa.VqaShapesConfig(name="bad", held_out=(("red", "hexagon"),))
    with pytest.raises(ValueError, match="heldout_scene_prob"):
        vqa.VqaShapesConfig(name="bad", heldout_scene_prob=1.5)


def test_more_questions_per_type():
    config = dataclasses.replace(
        vqa.DEFAULT_CONFIG, questions_per_type=2, question_types=("count",)
    )
    ex = vqa.generate_example(config, "test", 0)
    assert ex["question_types"] == ["count", "count"]
    assert len(set(ex["questions"])) == 2
    for q, a in zip(ex["questions"], ex["answers"], strict=True):
        assert derive(q, "count", ex["scene"].objects)[0] == a
