"""Top-k accuracy against hand-worked numbers, and the whole-split evaluation."""

import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxmm.evaluate.classification import classification_metrics, evaluate_classifier, topk_correct

# Four examples, six classes; worked out by hand below.
LOGITS = np.array(
    [
        [5.0, 1, 2, 3, 4, 0],  # label 0 is the largest: top-1 and top-5 hit
        [5.0, 1, 2, 3, 4, 0],  # label 4 is second: top-1 miss, top-5 hit
        [5.0, 1, 2, 3, 4, 0],  # label 5 is the smallest of six: top-5 miss
        [1.0, 1, 1, 1, 1, 1],  # all tied: the label beats nothing, so top-1 counts as a miss
    ]
)
LABELS = np.array([0, 4, 5, 2])


def test_topk_by_hand():
    np.testing.assert_array_equal(topk_correct(LOGITS, LABELS, 1), [True, False, False, False])
    np.testing.assert_array_equal(topk_correct(LOGITS, LABELS, 5), [True, True, False, False])
    np.testing.assert_array_equal(topk_correct(LOGITS, LABELS, 6), [True, True, True, True])


def test_metrics_by_hand_with_heldout_split():
    heldout = np.array([False, False, True, True])
    metrics = classification_metrics(LOGITS, LABELS, heldout)
    assert metrics["eval/top1"] == pytest.approx(1 / 4)
    assert metrics["eval/top5"] == pytest.approx(2 / 4)
    # Classes 0, 2, 4, 5 each have one example: per-class accuracies 1, 0, 0, 0.
    assert metrics["eval/mean_class_top1"] == pytest.approx(1 / 4)
    assert metrics["eval/seen_top1"] == pytest.approx(1 / 2)
    assert metrics["eval/heldout_top1"] == pytest.approx(0.0)


def test_mean_class_accuracy_differs_from_top1_when_imbalanced():
    # Class 0: three right; class 1: one wrong. top-1 3/4, per-class mean (1 + 0) / 2.
    logits = np.array([[1.0, 0], [1.0, 0], [1.0, 0], [1.0, 0]])
    metrics = classification_metrics(logits, np.array([0, 0, 0, 1]))
    assert metrics["eval/top1"] == pytest.approx(0.75)
    assert metrics["eval/mean_class_top1"] == pytest.approx(0.5)
    assert "eval/top5" not in metrics  # two classes: top-5 is meaningless


def test_evaluate_classifier_covers_every_example_once():
    rng = np.random.default_rng(0)
    source = [
        {"image": rng.integers(0, 255, (12, 10, 3), dtype=np.uint8), "label": i % 3}
        for i in range(7)
    ]
    config = ConfigDict(dict(image_size=8, mean=(0, 0, 0), std=(1, 1, 1), label_key="label"))
    seen = []

    def predict(images):
        seen.append(len(images))
        # A "model" that reads the label off the image index it was given: perfect accuracy
        # only if batches arrive in order and padding is cut off.
        return np.eye(3)[[i % 3 for i in range(sum(seen) - len(images), sum(seen))]]

    metrics = evaluate_classifier(predict, source, config, batch_size=4)
    assert seen == [4, 4]  # the last batch is padded to the fixed shape
    assert metrics["eval/top1"] == 1.0
