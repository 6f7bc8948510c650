"""The built-in long-tailed set: its exponential class profile, balanced test split,
determinism, and the labels read without decoding images."""

import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxmm.data import datasets, sampling, shapes
from jaxmm.data.longtail_shapes import (
    LongtailShapes,
    LongtailShapesConfig,
    class_ranks,
    generate_example,
    longtail_counts,
)


def test_profile_hand_worked():
    # n_r = 500 * 100^(-r/2) for three classes: 500, 50, 5.
    np.testing.assert_array_equal(longtail_counts(3, 500, 100.0), [500, 50, 5])
    # The smallest class keeps one example however steep the ratio.
    np.testing.assert_array_equal(longtail_counts(3, 20, 1000.0), [20, 1, 1])


def test_default_split_has_ratio_100_over_the_48_classes():
    config = LongtailShapes.builder_configs["default"]
    counts = config.train_counts
    assert len(counts) == 48 and counts.max() == 500 and counts.min() == 5
    # By rank the profile is exponential: ln n falls linearly, 25 classes above sqrt(500 * 5).
    by_rank = np.sort(counts)[::-1]
    np.testing.assert_allclose(np.log(by_rank[[0, 47]]), [np.log(500), np.log(5)])
    assert np.sum(counts > 50) == 24
    # The rank is a permutation, so rare classes are not all of one colour.
    rare = np.argsort(counts)[:12]
    assert len({label // len(shapes.SHAPES) for label in rare}) >= 5
    assert sorted(class_ranks(48, 0)) == list(range(48))
    assert config.split_sizes == {"train": counts.sum(), "test": 48 * 50}


def test_examples_are_deterministic_single_objects_of_their_class():
    config = LongtailShapesConfig(name="t", max_per_class=10, test_per_class=2)
    for split, index in [("train", 0), ("train", 7), ("test", 5)]:
        first, again = (
            generate_example(config, split, index),
            generate_example(config, split, index),
        )
        np.testing.assert_array_equal(first["image"], again["image"])
        assert first["label"] == config.label(split, index)
        colour, shape = config.class_names[first["label"]].split(" ")
        assert shapes.COLOUR_NAMES[first["colour"]] == colour
        assert shapes.SHAPES[first["shape"]] == shape
    assert not np.array_equal(
        generate_example(config, "train", 0)["image"], generate_example(config, "train", 1)["image"]
    )


def test_bad_knob_is_one_line():
    with pytest.raises(ValueError, match="imbalance_ratio") as error:
        LongtailShapesConfig(name="bad", imbalance_ratio=0.5)
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def smoke_builder(tmp_path_factory):
    config = ConfigDict(dict(name="longtail_shapes", builder_config="smoke"))
    config.data_dir = str(tmp_path_factory.mktemp("tfds"))
    return datasets.prepare_builder(config)


def test_built_splits_long_tailed_train_balanced_test(smoke_builder):
    config = smoke_builder.builder_config
    train = smoke_builder.as_data_source("train")
    # Labels read with the images left undecoded equal the fully decoded records' labels.
    labels = sampling.split_labels(train, "label")
    np.testing.assert_array_equal(labels, [train[i]["label"] for i in range(len(train))])
    np.testing.assert_array_equal(np.bincount(labels, minlength=48), config.train_counts)
    assert train[0]["image"].shape == (32, 32, 3)
    test_labels = sampling.split_labels(smoke_builder.as_data_source("test"), "label")
    np.testing.assert_array_equal(np.bincount(test_labels), np.full(48, config.test_per_class))
