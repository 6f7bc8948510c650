"""Top-1/top-5 classification accuracy of a `predict` function over a whole split.

`predict(images) -> logits [B, C]` is any function (a jitted, sharded model apply in the
trainer; a converted checkpoint in a notebook). When the split marks examples `heldout`
(the built-in dataset's colour-shape combinations never shown in training), the accuracy on
those and on the rest is reported apart: a closed-set classifier cannot name a class it never
saw, which is exactly the gap zero-shot CLIP closes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from jaxmm.data import pipeline

Predict = Callable[[np.ndarray], Any]


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """`[N]` bool: whether `labels` is among the `k` largest of `logits [N, C]`.

    Ties count against the label (its rank counts every other class scoring at least as
    high), so a constant output is never right at top-1.
    """
    logits = np.asarray(logits, np.float64)
    label_logit = np.take_along_axis(logits, labels[:, None], axis=1)  # [N, 1]
    rank = (logits >= label_logit).sum(axis=1) - 1  # other classes at least as high
    return rank < k


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, heldout: np.ndarray | None = None, prefix: str = "eval"
) -> dict[str, float]:
    """`{prefix}/top1`, `/top5` (when there are more than 5 classes), per-class mean top-1,
    and `/seen_top1`, `/heldout_top1` when `heldout` flags are given."""
    labels = np.asarray(labels)
    top1 = topk_correct(logits, labels, 1)
    metrics = {f"{prefix}/top1": float(top1.mean())}
    if logits.shape[1] > 5:
        metrics[f"{prefix}/top5"] = float(topk_correct(logits, labels, 5).mean())
    # Mean of per-class accuracies: the headline number for imbalanced test sets.
    present = np.unique(labels)
    metrics[f"{prefix}/mean_class_top1"] = float(
        np.mean([top1[labels == c].mean() for c in present])
    )
    if heldout is not None and heldout.any():
        metrics[f"{prefix}/heldout_top1"] = float(top1[heldout].mean())
        metrics[f"{prefix}/seen_top1"] = float(top1[~heldout].mean())
    return metrics


def evaluate_classifier(
    predict: Predict,
    source: Sequence[dict[str, Any]],
    data_config: ConfigDict,
    batch_size: int,
) -> dict[str, float]:
    """Accuracy of `predict` on every example of `source` (labels from `data.label_key`)."""
    label_key = data_config.get("label_key", "label")
    annotations = pipeline.split_annotations(source, label_key)
    if annotations["labels"] is None:
        raise ValueError(f"the evaluation split has no {label_key!r} feature to score against")
    logits = np.concatenate(
        [
            np.asarray(predict(images))[:valid]
            for images, valid in pipeline.eval_batches(source, data_config, batch_size)
        ]
    )
    return classification_metrics(logits, annotations["labels"], annotations["heldout"])
