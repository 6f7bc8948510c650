"""The class-imbalance switches of a classification run: each loss built from the training
split's class counts, a resampled run end to end, and config typos caught."""

import numpy as np
import pytest

from configs import longtail_shapes
from jaxmm import losses
from jaxmm.data import datasets, pipeline
from jaxmm.train import tasks
from jaxmm.train.config_check import check_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


def _smoke_config(data_dir: str, **loss_fields):
    config = longtail_shapes.get_config("smoke")
    config.data.data_dir = data_dir
    config.progress_bar = False
    config.classification_loss.update(loss_fields)
    return config


LOGITS = np.random.default_rng(0).normal(size=(6, 48)).astype(np.float32)
LABELS = np.array([0, 5, 17, 30, 47, 47])


@pytest.mark.parametrize(
    "name, expected",
    [
        ("softmax_ce", lambda counts: losses.softmax_cross_entropy_per_example(LOGITS, LABELS)),
        ("focal", lambda counts: losses.softmax_focal_loss(LOGITS, LABELS, 2.0)),
        ("sigmoid_focal", lambda counts: losses.sigmoid_focal_loss(LOGITS, LABELS, 2.0, 0.25)),
        (
            "class_balanced",
            lambda counts: (
                losses.class_balanced_weights(counts, 0.9999)[LABELS]
                * losses.softmax_cross_entropy_per_example(LOGITS, LABELS)
            ),
        ),
        (
            "logit_adjusted",
            lambda counts: losses.logit_adjusted_cross_entropy(
                LOGITS, LABELS, losses.log_class_priors(counts), 1.0
            ),
        ),
    ],
)
def test_task_builds_each_loss_from_the_training_split(name, expected, data_dir):
    config = _smoke_config(data_dir, name=name)
    builder = datasets.prepare_builder(config.data)
    task = tasks.make_task(config, builder, workdir=None)
    counts = builder.builder_config.train_counts  # what the split was generated with
    np.testing.assert_allclose(
        task.objective.example_losses(LOGITS, LABELS), expected(counts), rtol=1e-6
    )


def test_resampled_logit_adjusted_batches_from_the_built_split(data_dir):
    """The switches together on the real tfds split: the config passes its check, the
    resampled stream reads labels and images from array_record, and the loss is finite.
    (The training loop itself runs in tests/train/test_configs.py's smoke run.)"""
    config = _smoke_config(data_dir, name="logit_adjusted", tau=0.5)
    config.data.sampling = "sqrt"
    check_config(config)
    builder = datasets.prepare_builder(config.data)
    task = tasks.make_task(config, builder, workdir=None)
    iterator = pipeline.train_iterator(
        builder.as_data_source("train"), task.example_fn, config.data, batch_size=16, seed=0
    )
    batch = next(iterator)
    assert batch["image"].shape == (16, 32, 32, 3) and batch["label"].shape == (16,)
    loss, _ = task.objective.loss(np.zeros((16, 48), np.float32), batch)
    # Zero logits shifted by tau * log prior: the loss is the mean of
    # -(tau log pi_y - logsumexp(tau log pi)), worked out from the split's counts here.
    counts = builder.builder_config.train_counts
    shifted = 0.5 * np.log(counts / counts.sum())
    expected = np.mean(np.log(np.exp(shifted).sum()) - shifted[batch["label"]])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("classification_loss.gama", 2.0, "classification_loss.gama: unknown key"),
        ("data.samplng", "sqrt", r"data.samplng: unknown key \(did you mean data.sampling\?\)"),
    ],
)
def test_config_typos_are_caught(field, value, message, data_dir):
    config = _smoke_config(data_dir)
    section, key = field.split(".")
    with config.unlocked():
        config[section][key] = value
    with pytest.raises(ValueError, match=message):
        check_config(config)
