"""The built-in `clip_shapes` dataset: a tiny build read back with `as_data_source`.

Checks the held-out table, features, byte-identical rebuilds, that no train object
is a held-out combination, balanced evaluation splits, caption content, that the
pixels carry the named colour, the multi-object sampler, config overrides and
`tfds.testing.mock_data`.
"""

import collections
import colorsys
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxmm.data import shapes

TINY = dict(num_train=200, num_validation=96, num_test=96)  # 96 = 2 per class
KEYS = {"image", "captions", "image_id", "label", "colour", "shape", "heldout", "num_objects"}


def _text(value) -> str:
    # Real data gives bytes, mock_data gives str.
    return value.decode() if isinstance(value, bytes) else str(value)


def _build(data_dir, **overrides) -> tfds.core.DatasetBuilder:
    builder = shapes.ClipShapes(config="smoke", data_dir=data_dir, **TINY, **overrides)
    builder.download_and_prepare()
    return builder


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def records(builder) -> dict[str, list[dict]]:
    out = {}
    for split in shapes.SPLITS:
        source = builder.as_data_source(split)
        out[split] = [source[i] for i in range(len(source))]
    return out


def _words(text: str) -> tuple[list[str], list[str]]:
    """The colour words and the shape words that a caption mentions."""
    colours = shapes.caption_words(text, shapes.COLOUR_NAMES)
    return colours, shapes.caption_words(text, shapes.SHAPES)


def test_held_out_table():
    assert len(shapes.CLASS_NAMES) == 48 and shapes.CLASS_NAMES[:2] == ("red circle", "red square")
    assert len(shapes.HELD_OUT_PAIRS) == len(shapes.HELD_OUT) == 8
    colours = collections.Counter(c for c, _ in shapes.HELD_OUT_PAIRS)
    held_shapes = collections.Counter(s for _, s in shapes.HELD_OUT_PAIRS)
    assert set(colours.values()) == {1} and len(colours) == 8
    assert set(held_shapes) == set(shapes.SHAPES) and set(held_shapes.values()) <= {1, 2}
    assert {shapes.CLASS_NAMES[i] for i in shapes.HELD_OUT} == {
        f"{c} {s}" for c, s in shapes.HELD_OUT_PAIRS
    }


def test_features(builder, records):
    assert builder.info.features["label"].names == list(shapes.CLASS_NAMES)
    assert {s: len(r) for s, r in records.items()} == {"train": 200, "validation": 96, "test": 96}
    for split, rows in records.items():
        for ex in rows[:20]:
            assert set(ex) == KEYS
            assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
            assert re.fullmatch(rf"{split}/\d{{6}}", _text(ex["image_id"]))
            assert len(ex["captions"]) == 3 and all(_text(c) for c in ex["captions"])
            assert ex["label"] == ex["colour"] * 6 + ex["shape"]
            assert bool(ex["heldout"]) == (int(ex["label"]) in shapes.HELD_OUT)
            assert ex["num_objects"] == 1


def test_stored_images_are_the_rendered_ones(builder, records):
    for split in ("train", "test"):
        for ex in records[split][:5]:
            index = int(_text(ex["image_id"]).split("/")[1])
            expected = shapes.generate_example(builder.builder_config, split, index)
            np.testing.assert_array_equal(ex["image"], expected["image"])  # PNG is lossless
            assert [_text(c) for c in ex["captions"]] == expected["captions"]


def test_rebuild_is_byte_identical(builder, tmp_path):
    again = _build(tmp_path)
    files = sorted(p.name for p in builder.data_path.glob("*.array_record*"))
    assert len(files) == 3
    for name in files:
        assert (builder.data_path / name).read_bytes() == (again.data_path / name).read_bytes()


def test_train_has_no_held_out_combination(records):
    for ex in records["train"]:
        assert int(ex["label"]) not in shapes.HELD_OUT and not ex["heldout"]
        for caption in map(_text, ex["captions"]):
            (colour,), (shape,) = _words(caption)
            assert (colour, shape) not in shapes.HELD_OUT_PAIRS


@pytest.mark.parametrize("split", ["validation", "test"])
def test_eval_splits_balanced_with_held_out(records, split):
    labels = collections.Counter(int(ex["label"]) for ex in records[split])
    assert labels == {i: 2 for i in range(48)}
    assert sum(bool(ex["heldout"]) for ex in records[split]) == 16
    assert all(ex["num_objects"] == 1 for ex in records[split])


def test_captions_name_the_object_and_never_left_or_right(records):
    for rows in records.values():
        for ex in rows:
            colour, shape = shapes.CLASS_NAMES[int(ex["label"])].split()
            for caption in map(_text, ex["captions"]):
                assert _words(caption) == ([colour], [shape]), caption
                assert not re.search(r"\b(left|right)\b", caption.lower()), caption


def test_caption_grammar_is_varied():
    captions = list(shapes.all_captions(shapes.ClipShapesConfig(name="t", num_train=500)))
    assert len(set(captions)) > 500
    assert any("that is" in c for c in captions) and any("-colo" in c for c in captions)
    assert any("background" in c for c in captions) and any("top" in c for c in captions)


def test_all_captions_reproduce_the_stored_ones(builder, records):
    stored = [_text(c) for ex in records["train"] for c in ex["captions"]]
    assert sorted(shapes.all_captions(builder.builder_config)) == sorted(stored)


def _hsv_point(rgb) -> np.ndarray:
    """A colour as a point in the HSV cone: hue angle and saturation radius, value height."""
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    return np.array([s * np.cos(2 * np.pi * h), s * np.sin(2 * np.pi * h), v])


def test_object_pixels_carry_the_named_colour():
    centres = {
        c.name: _hsv_point(colorsys.hsv_to_rgb(c.hue / 360, np.mean(c.sat), np.mean(c.val)))
        for c in shapes.COLOURS
    }
    rng = np.random.default_rng(0)
    for label in list(range(48)) * 3:
        ex = shapes.render_example(rng, label=label)
        image, (mask,) = ex["image"] / 255.0, ex["masks"]
        inside, outside = image[mask > 0.99].mean(0), image[mask < 0.01].mean(0)
        assert np.abs(inside - outside).max() > 0.1  # the object stands out
        point = _hsv_point(inside)
        nearest = min(centres, key=lambda name: np.linalg.norm(centres[name] - point))
        assert nearest == shapes.COLOUR_NAMES[ex["colour"]], (label, inside)


def test_multi_object_scenes():
    config = shapes.ClipShapes.builder_configs["multi"]
    counts = collections.Counter()
    for index in range(300):
        ex = shapes.generate_example(config, "train", index)
        objects = ex["scene"].objects
        counts[len(objects)] += 1
        assert ex["num_objects"] == len(objects) and not ex["heldout"]
        assert all((o.colour, o.shape) not in shapes.HELD_OUT_PAIRS for o in objects)
        assert ex["masks"].sum(0).max() <= 1 + 1e-5  # no overlap
        for caption in ex["captions"]:
            colours, names = _words(caption)
            assert sorted(colours) == sorted(o.colour for o in objects), caption
            assert sorted(names) == sorted(o.shape for o in objects), caption
            assert not re.search(r"\b(left|right)\b", caption.lower()), caption
    assert min(counts[k] for k in (1, 2, 3)) > 50, counts
    # Evaluation images keep one object whatever objects_per_image says.
    assert shapes.generate_example(config, "test", 7)["num_objects"] == 1


def test_overrides_get_their_own_config_name(tmp_path):
    a = shapes.ClipShapes(config="smoke", data_dir=tmp_path, objects_per_image=[1, 2])
    b = shapes.ClipShapes(config="smoke", data_dir=tmp_path, objects_per_image=(1, 2))
    assert a.builder_config.name == b.builder_config.name != "smoke"
    assert a.builder_config.objects_per_image == (1, 2)
    with pytest.raises(ValueError, match="unknown"):
        shapes.ClipShapesConfig(name="bad", held_out=(("red", "hexagon"),))


def test_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=5):
        source = shapes.ClipShapes(config="smoke", data_dir=tmp_path).as_data_source("train")
        assert len(source) == 5
        ex = source[0]
    assert set(ex) == KEYS
    assert ex["image"].shape == (32, 32, 3)
    assert all(isinstance(_text(c), str) for c in ex["captions"])
