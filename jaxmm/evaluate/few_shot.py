"""k-shot evaluation: k labelled images per class, classified by nearest class prototype.

The classifier is the normalised mean of each class's k normalised image features, scored
by cosine similarity (a prototype, or nearest-centroid, classifier), rather than the linear
probe refitted on k examples. With k = 1 or a few there is no labelled data left to choose the
probe's L2 strength honestly, and the prototype classifier has no hyperparameter at all; it is
also exactly the zero-shot classifier with image prototypes in place of prompt embeddings, so
the two accuracies compare like for like (`zeroshot_metrics` scores both). The k images are a
seeded sample of each class, so a rerun gives the same number.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxmm.evaluate.linear_probe import l2_normalize
from jaxmm.evaluate.zeroshot import zeroshot_metrics


def sample_k_per_class(labels: np.ndarray, k: int, num_classes: int, seed: int) -> np.ndarray:
    """Indices of `k` examples of every class, drawn without replacement.

    Args:
      labels: `[N]` int in [0, num_classes).
      k: examples per class.
      num_classes: every class in [0, num_classes) must have at least `k` examples.
      seed: the draw is a function of `(seed, k)` only.

    Returns:
      `[num_classes * k]` indices into `labels`, class-major.
    """
    if k < 1:
        raise ValueError(f"few-shot k must be positive, got {k}")
    rng = np.random.default_rng((seed, k))
    counts = np.bincount(labels, minlength=num_classes)
    short = np.flatnonzero(counts < k)
    if short.size:
        raise ValueError(
            f"{k}-shot needs {k} examples of every class; classes {short[:10].tolist()} have "
            f"{counts[short[:10]].tolist()}"
        )
    return np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c in range(num_classes)]
    )


def prototypes(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """`[num_classes, D]` unit-norm class means of the unit-normalised `features [N, D]`."""
    features = l2_normalize(features)
    sums = np.zeros((num_classes, features.shape[1]), np.float64)
    np.add.at(sums, labels, features)
    return l2_normalize(sums)


def few_shot_metrics(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    shots: Sequence[int],
    seed: int = 0,
) -> dict[str, float]:
    """`{"k{K}_top1": ...}`: test accuracy of the prototypes of K sampled examples per class.

    Args:
      train: `(features [N, D], labels [N])` to draw the shots from.
      test: `(features [M, D], labels [M])` to score.
      num_classes: the class count.
      shots: the values of K.
      seed: sampling seed.
    """
    train_x, train_y = np.asarray(train[0]), np.asarray(train[1])
    metrics = {}
    for k in shots:
        chosen = sample_k_per_class(train_y, k, num_classes, seed)
        classifier = prototypes(train_x[chosen], train_y[chosen], num_classes)
        metrics[f"k{k}_top1"] = zeroshot_metrics(test[0], test[1], classifier, topk=(1,))["top1"]
    return metrics
