"""The built-in `mm_shapes` dataset: the label needs the image's shape and the text's material.

Checks the class table and the chance levels against hand-worked numbers, that each example
is deterministic and its label agrees with the drawn scene and the text, that no text names
a shape and every text names its material (a bag-of-words classifier fitted on one split
reads the material of another but not the shape), class balance, the held-out pairs, that the
pixels do not depend on the text, and a smoke build read back through tfds.
"""

import collections
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxmm.data import mm_shapes, shapes

# Shape names and the words that would give a shape away. Substrings, not words: "star"
# inside "starry" or "mustard" would leak it just the same.
SHAPE_WORDS = (
    *shapes.SHAPES,
    "round",
    "circular",
    "oval",
    "ring",
    "ball",
    "sphere",
    "disc",
    "disk",
    "cube",
    "rectang",
    "triangular",
    "pyramid",
    "rhomb",
    "lozenge",
    "plus",
    "corner",
    "sided",
    "point",
    "shape",
)
KEYS = {"image", "text", "image_id", "label", "shape", "material", "colour", "heldout"}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    builder = mm_shapes.MmShapes(config="smoke", data_dir=tmp_path_factory.mktemp("tfds"))
    builder.download_and_prepare()
    return builder


def test_class_table():
    names = mm_shapes.CLASS_NAMES
    assert len(names) == 24 and names[:2] == ("wooden circle", "wooden square")
    assert names[23] == "plastic cross" and names.index("glass star") == 2 * 6 + 4
    assert {names[i] for i in mm_shapes.HELD_OUT} == {
        "wooden triangle",
        "metal circle",
        "glass star",
        "plastic square",
    }
    # One held-out shape per material, each a different shape.
    assert (
        len({m for m, _ in mm_shapes.HELD_OUT_PAIRS})
        == len({s for _, s in mm_shapes.HELD_OUT_PAIRS})
        == 4
    )


def test_chance_levels_worked_by_hand():
    config = mm_shapes.DEFAULT_CONFIG
    test = mm_shapes.chance_levels(config, "test")
    assert test["image_only"] == pytest.approx(1 / 4) and test["text_only"] == pytest.approx(1 / 6)
    assert test["fused"] == 1 and test["uniform"] == pytest.approx(1 / 24)
    # Train is uniform over 20 seen classes. Image-only: the 4 shapes that lose a material
    # (12 of 20 classes) guess among 3 materials, the other 2 shapes among 4:
    # 12/20 * 1/3 + 8/20 * 1/4 = 0.3. Text-only: every material has 5 seen shapes: 1/5.
    train = mm_shapes.chance_levels(config, "train")
    assert train["image_only"] == pytest.approx(0.3) and train["text_only"] == pytest.approx(0.2)
    # 30 cycled labels: the 6 wooden classes twice, the other 18 once (shares of 30).
    odd = mm_shapes.MmShapesConfig(name="odd", num_test=30)
    levels = mm_shapes.chance_levels(odd, "test")
    assert levels["image_only"] == pytest.approx(6 * 2 / 30)
    assert levels["text_only"] == pytest.approx((2 + 1 + 1 + 1) / 30)


def test_examples_are_deterministic_and_consistent_with_scene_and_text():
    config = mm_shapes.DEFAULT_CONFIG
    for split in shapes.SPLITS:
        for index in range(12):
            ex = mm_shapes.generate_example(config, split, index)
            again = mm_shapes.generate_example(config, split, index)
            np.testing.assert_array_equal(ex["image"], again["image"])
            assert ex["text"] == again["text"] and ex["label"] == again["label"]
            (obj,) = ex["scene"].objects
            assert obj.shape == config.shapes[ex["shape"]]
            assert obj.colour == config.colours[ex["colour"]].name
            assert mm_shapes.text_material(ex["text"]) == ex["material"]
            assert ex["label"] == 6 * ex["material"] + ex["shape"]
            assert ex["heldout"] == (ex["label"] in mm_shapes.HELD_OUT)
            assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
            if split != "train":
                assert ex["label"] == index % 24
    a, b = (mm_shapes.generate_example(config, "train", i) for i in (0, 1))
    assert a["text"] != b["text"] and not np.array_equal(a["image"], b["image"])


def test_all_texts_match_the_examples():
    config = mm_shapes.MmShapesConfig(name="t", num_validation=30)
    texts = list(mm_shapes.all_texts(config, "validation"))
    examples = [mm_shapes.generate_example(config, "validation", i) for i in range(30)]
    assert texts == [(ex["label"], ex["text"]) for ex in examples]


def _texts(split: str, n: int) -> list[tuple[int, str]]:
    config = mm_shapes.MmShapesConfig(name="t", num_train=n, num_validation=n, num_test=n)
    return list(mm_shapes.all_texts(config, split))


def test_no_text_names_a_shape_and_every_text_names_its_material():
    texts = [t for split in shapes.SPLITS for t in _texts(split, 2000)]
    for label, text in texts:
        assert not [w for w in SHAPE_WORDS if w in text.lower()], text
        assert mm_shapes.text_material(text) == label // 6, text
    # The colour is named in about half of the texts (colour_mention_prob = 0.5).
    named = sum(bool(shapes.caption_words(t, shapes.COLOUR_NAMES)) for _, t in texts)
    assert 0.45 < named / len(texts) < 0.55
    assert len({t for _, t in texts}) > 0.95 * len(texts)  # varied phrasings, few repeats


def _bag_of_words_accuracy(train, test, target) -> float:
    """Top-1 of a multinomial naive Bayes on words, fitted on `train`, scored on `test`."""
    words = lambda text: re.findall(r"[a-z]+", text.lower())  # noqa: E731
    vocab = {w: i for i, w in enumerate(sorted({w for _, t in train for w in words(t)}))}
    classes = sorted({target(label) for label, _ in train})
    counts = np.ones((len(classes), len(vocab)))  # Laplace smoothing
    prior = np.zeros(len(classes))
    for label, text in train:
        c = classes.index(target(label))
        prior[c] += 1
        for w in words(text):
            counts[c, vocab[w]] += 1
    log_p = np.log(counts / counts.sum(axis=1, keepdims=True))
    correct = 0
    for label, text in test:
        idx = [vocab[w] for w in words(text) if w in vocab]
        scores = np.log(prior) + log_p[:, idx].sum(axis=1)
        correct += classes[int(scores.argmax())] == target(label)
    return correct / len(test)


def test_text_gives_the_material_but_not_the_shape():
    fit, held = _texts("validation", 1200), _texts("test", 2400)
    assert _bag_of_words_accuracy(fit, held, lambda label: label // 6) > 0.99
    # Chance is 1/6; 2,400 examples put one standard deviation at 0.8 points.
    assert _bag_of_words_accuracy(fit, held, lambda label: label % 6) < 1 / 6 + 0.04


def test_class_balance_and_held_out_pairs():
    evaluation = collections.Counter(label for label, _ in _texts("test", 2400))
    assert evaluation == {label: 100 for label in range(24)}
    train = collections.Counter(label for label, _ in _texts("train", 6000))
    assert set(train) == set(range(24)) - mm_shapes.HELD_OUT
    # Uniform over 20 seen classes: 300 expected each, standard deviation about 17.
    assert all(215 < n < 385 for n in train.values()), train


def test_pixels_do_not_depend_on_the_text():
    plain = mm_shapes.MmShapesConfig(name="plain", colour_mention_prob=0.0, max_distractors=0)
    pairs = [
        (
            mm_shapes.generate_example(mm_shapes.DEFAULT_CONFIG, "test", i),
            mm_shapes.generate_example(plain, "test", i),
        )
        for i in range(6)
    ]
    for a, b in pairs:
        np.testing.assert_array_equal(a["image"], b["image"])
        assert not shapes.caption_words(b["text"], shapes.COLOUR_NAMES)
    assert any(a["text"] != b["text"] for a, b in pairs)


def test_smoke_build_through_tfds(builder):
    assert builder.info.features["label"].names == list(mm_shapes.CLASS_NAMES)
    assert builder.info.features["material"].names == list(mm_shapes.MATERIAL_NAMES)
    config = builder.builder_config
    sizes = {split: len(builder.as_data_source(split)) for split in shapes.SPLITS}
    assert sizes == {"train": 480, "validation": 96, "test": 96}
    for split in shapes.SPLITS:
        source = builder.as_data_source(split)
        for i in range(0, len(source), 16):
            record = source[i]
            assert set(record) == KEYS
            index = int(re.fullmatch(rf"{split}/(\d{{6}})", _text(record["image_id"]))[1])
            expected = mm_shapes.generate_example(config, split, index)
            np.testing.assert_array_equal(record["image"], expected["image"])  # PNG: lossless
            assert _text(record["text"]) == expected["text"]
            for key in ("label", "shape", "material", "colour", "heldout"):
                assert record[key] == expected[key], key
    train = builder.as_data_source("train")
    assert not any(bool(train[i]["heldout"]) for i in range(len(train)))


def test_keyword_overrides_name_a_fresh_config(tmp_path):
    a = mm_shapes.MmShapes(config="smoke", data_dir=tmp_path, num_train=24)
    b = mm_shapes.MmShapes(config="smoke", data_dir=tmp_path, num_train=48)
    assert (
        a.builder_config.name.startswith("smoke_")
        and a.builder_config.name != b.builder_config.name
    )
    assert a.builder_config.num_train == 24 and a.builder_config.num_validation == 96


def test_bad_configs_fail_clearly():
    with pytest.raises(ValueError, match="unknown material or shape"):
        mm_shapes.MmShapesConfig(name="x", held_out=(("golden", "star"),))
    twin = mm_shapes.Material("oaken", ("oak",), ("oak",))
    with pytest.raises(ValueError, match="share a name or a head word"):
        mm_shapes.MmShapesConfig(name="x", materials=(*mm_shapes.MATERIALS, twin))
    with pytest.raises(ValueError, match="names 2 materials"):
        mm_shapes.text_material("an oak and brass charm")
    assert mm_shapes.text_material("a charm") is None


def test_mock_data_reads_through_data_source():
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        source = mm_shapes.MmShapes(config="smoke").as_data_source("train")
        record = source[0]
        assert set(record) == KEYS and record["image"].shape == (32, 32, 3)
        assert isinstance(_text(record["text"]), str)
