"""Class-aware resampling: the drawn class frequencies, and a stream as deterministic and
resumable as the plain shuffle, on any number of processes."""

import grain
import numpy as np
import pytest
from scipy import stats

from configs import resnet18_shapes
from jaxmm.data import pipeline, sampling

# Class sizes 400, 100, 25, 4 and an empty class: square roots 20, 10, 5, 2, 0.
COUNTS = np.array([400, 100, 25, 4, 0])
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(5), COUNTS))
EXPECTED = {
    "sqrt": np.array([20, 10, 5, 2, 0]) / 37,
    "class_balanced": np.array([1, 1, 1, 1, 0]) / 4,
}


def _source(labels=LABELS) -> list[dict]:
    image = np.zeros((4, 4, 3), np.uint8)
    return [{"image": image, "label": int(y), "id": i} for i, y in enumerate(labels)]


def _data_config(sampling_name: str):
    config = resnet18_shapes.get_config().data
    config.sampling = sampling_name
    return config


def _ids(example: dict, rng: np.random.Generator) -> dict:
    """The example's position in the source, and one draw of its generator."""
    return {"id": np.int32(example["id"]), "draw": rng.integers(2**31)}


def _batches(sampling_name, count, *, seed=0, batch_size=8, process_index=0, process_count=1):
    iterator = pipeline.train_iterator(
        _source(),
        _ids,
        _data_config(sampling_name),
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )
    return iterator, [next(iterator) for _ in range(count)]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_class_probabilities_hand_worked(name):
    exponent = sampling.SAMPLING_EXPONENTS[name]
    np.testing.assert_allclose(sampling.class_probabilities(COUNTS, exponent), EXPECTED[name])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_drawn_classes_follow_the_probabilities(name):
    config = _data_config(name)
    stream = sampling.index_stream(_source(), config, seed=1)
    indices = np.array([stream[k] for k in range(20_000)])
    drawn = np.bincount(LABELS[indices], minlength=5)
    assert drawn[4] == 0  # an empty class is never drawn
    # Chi-square goodness of fit (scipy), the stream fixed by its seed: p is one number.
    _, p_classes = stats.chisquare(drawn[:4], EXPECTED[name][:4] * len(indices))
    assert p_classes > 1e-3, (drawn, p_classes)
    # Within a class every example is equally likely (the 100 examples of class 1).
    members = np.flatnonzero(LABELS == 1)
    per_member = np.array([np.sum(indices == m) for m in members])
    _, p_members = stats.chisquare(per_member)
    assert p_members > 1e-3, p_members


def test_uniform_keeps_the_original_shuffle():
    config = _data_config("uniform")
    del config["sampling"]  # the pipeline as it was before the field existed
    original = grain.MapDataset.range(len(LABELS)).shuffle(seed=5).repeat()
    for data in (config, _data_config("uniform")):
        stream = sampling.index_stream(_source(), data, seed=5)
        # Three epochs: each a permutation, reshuffled each epoch, as before.
        assert [stream[k] for k in range(3 * len(LABELS))] == [
            original[k] for k in range(3 * len(LABELS))
        ]


@pytest.mark.parametrize("name", ["sqrt", "class_balanced"])
def test_resampled_stream_is_deterministic_resumable_and_process_independent(name):
    _, whole = _batches(name, 6)
    _, again = _batches(name, 6)
    for a, b in zip(whole, again, strict=True):
        np.testing.assert_array_equal(a["id"], b["id"])
        np.testing.assert_array_equal(a["draw"], b["draw"])
    _, other_seed = _batches(name, 6, seed=1)
    assert not np.array_equal(whole[0]["id"], other_seed[0]["id"])

    # Resume from the state after three batches.
    iterator, _ = _batches(name, 3)
    state = iterator.get_state()
    resumed, _ = _batches(name, 0)
    resumed.set_state(state)
    for batch in whole[3:]:
        np.testing.assert_array_equal(next(resumed)["id"], batch["id"])

    # Two processes together read the global batches of one.
    halves = [_batches(name, 6, process_index=i, process_count=2)[1] for i in range(2)]
    for batch, first, second in zip(whole, *halves, strict=True):
        np.testing.assert_array_equal(batch["id"], np.concatenate([first["id"], second["id"]]))
        np.testing.assert_array_equal(
            batch["draw"], np.concatenate([first["draw"], second["draw"]])
        )


def test_resampling_changes_which_examples_are_read():
    """The rare classes are drawn far more often than in the shuffle, where they are 1%."""
    _, batches = _batches("class_balanced", 50, batch_size=16)
    rare = np.isin(LABELS[np.concatenate([b["id"] for b in batches])], [2, 3])
    assert 0.4 < rare.mean() < 0.6  # expected: 2 of 4 classes, 0.5


def test_unknown_sampling_is_one_line():
    with pytest.raises(ValueError, match="unknown data.sampling 'balanced'") as error:
        sampling.index_stream(_source(), _data_config("balanced"), seed=0)
    assert "\n" not in str(error.value)


def test_class_counts_and_bad_labels():
    np.testing.assert_array_equal(sampling.class_counts(LABELS, 5), COUNTS)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        sampling.class_counts(LABELS, 3)


def test_split_labels_of_a_list_and_a_missing_key():
    np.testing.assert_array_equal(sampling.split_labels(_source(), "label"), LABELS)
    with pytest.raises(ValueError, match="no 'colour' feature"):
        sampling.split_labels(_source(), "colour")
