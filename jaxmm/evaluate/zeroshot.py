"""Zero-shot classification with a CLIP-style model.

`zeroshot_classifier` builds one text embedding per class by prompt ensembling, exactly as
OpenAI's `notebooks/Prompt_Engineering_for_ImageNet.ipynb` (and open_clip's
`build_zero_shot_classifier`): every template is filled with the class name and encoded,
each embedding is L2-normalised, the embeddings of a class are averaged over templates,
and the mean is normalised again. `zeroshot_metrics` scores image embeddings against that
classifier.

Ranking and ties: classes are ranked by similarity, ties broken towards the lower class
index, the order `argmax` and a stable descending sort give. The rank of the true class y
is therefore `#{c : s_c > s_y} + #{c < y : s_c == s_y}`, and a top-k hit means rank < k;
top-1 hits are exactly `argmax(scores) == y`. An example whose true-class score is NaN
(e.g. a diverged model) counts as a miss.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Zero vectors (e.g. from a dead model) stay zero instead of becoming NaN.
_NORM_EPS = 1e-12


def _l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), _NORM_EPS)


def zeroshot_classifier(
    encode_text: Callable[[np.ndarray], Any],
    tokenize: Callable[[list[str]], np.ndarray],
    class_names: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
) -> np.ndarray:
    """Builds the zero-shot classifier by prompt ensembling.

    All class x template prompts are flattened and encoded in batches of exactly
    `batch_size` rows: the last batch is padded by repeating its last token row, so a jitted
    `encode_text` compiles once, and the padding rows are dropped afterwards.

    Args:
      encode_text: maps tokens `[batch_size, L]` to text embeddings `[batch_size, D]` (a jax
        or numpy array, any float dtype). They need not be normalised; they are normalised
        here anyway.
      tokenize: maps a list of strings to int tokens `[len(list), L]`.
      class_names: the C class names, in label order.
      templates: the T prompt templates, each with one `{}` for the class name.
      batch_size: rows per `encode_text` call.

    Returns:
      `[C, D]` float32 classifier with unit-norm rows; row c is class c.
    """
    if not class_names or not templates:
        raise ValueError("need at least one class name and one template")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    # Class-major order, so that a reshape to [C, T, D] groups each class's prompts.
    prompts = [template.format(name) for name in class_names for template in templates]

    chunks = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        tokens = np.asarray(tokenize(batch))  # [b, L]
        num_valid = tokens.shape[0]
        if num_valid != len(batch):
            raise ValueError(f"tokenize returned {num_valid} rows for {len(batch)} texts")
        if num_valid < batch_size:
            # Repeat a real row rather than pad with zeros: an all-padding sequence is
            # outside what the text model was trained on.
            tokens = np.pad(tokens, ((0, batch_size - num_valid), (0, 0)), mode="edge")
        embeddings = np.asarray(encode_text(tokens), dtype=np.float32)  # [batch_size, D]
        chunks.append(embeddings[:num_valid])
    embeddings = _l2_normalize(np.concatenate(chunks, axis=0))  # [C * T, D]

    per_class = embeddings.reshape(len(class_names), len(templates), -1)  # [C, T, D]
    return _l2_normalize(per_class.mean(axis=1)).astype(np.float32)  # [C, D]


@jax.jit
def _true_class_ranks_chunk(
    image_embeddings: jax.Array, labels: jax.Array, classifier: jax.Array
) -> jax.Array:
    """Rank of the true class for each image of a chunk (see the module docstring).

    Args:
      image_embeddings: `[B, D]`.
      labels: `[B]` int in [0, C).
      classifier: `[C, D]`.

    Returns:
      `[B]` int32 ranks in [0, C]; C for a NaN true-class score.
    """
    # Full float32 precision: ranks must not depend on the accelerator's default dot passes.
    scores = jnp.einsum(
        "bd,cd->bc",
        image_embeddings.astype(jnp.float32),
        classifier.astype(jnp.float32),
        precision=jax.lax.Precision.HIGHEST,
    )  # [B, C]
    true_scores = jnp.take_along_axis(scores, labels[:, None], axis=1)  # [B, 1]
    classes = jnp.arange(scores.shape[1])[None, :]  # [1, C]
    ahead = (scores > true_scores) | ((scores == true_scores) & (classes < labels[:, None]))
    ranks = jnp.sum(ahead, axis=1, dtype=jnp.int32)
    return jnp.where(jnp.isnan(true_scores[:, 0]), scores.shape[1], ranks)


def true_class_ranks(
    image_embeddings: np.ndarray | jax.Array,
    labels: np.ndarray | jax.Array,
    classifier: np.ndarray | jax.Array,
    chunk_size: int = 4096,
) -> np.ndarray:
    """Rank of the true class among all classes, for every image.

    Scores `image_embeddings @ classifier.T` in chunks of `chunk_size` images (the last one
    padded, so the jitted kernel compiles once per shape), never holding more than
    `[chunk_size, C]` scores.

    Args:
      image_embeddings: `[N, D]`. Normalisation does not matter: a positive per-image scale
        leaves the ranking unchanged.
      labels: `[N]` int class indices in [0, C).
      classifier: `[C, D]`, e.g. from `zeroshot_classifier`.
      chunk_size: images scored at a time.

    Returns:
      `[N]` int ranks: 0 is a top-1 hit; ties go to the lower class index.
    """
    image_embeddings = np.asarray(image_embeddings)
    labels = np.asarray(labels)
    num_classes = classifier.shape[0]
    if image_embeddings.ndim != 2 or classifier.ndim != 2:
        raise ValueError(
            f"expected [N, D] images and [C, D] classifier, got {image_embeddings.shape} "
            f"and {classifier.shape}"
        )
    if labels.shape != image_embeddings.shape[:1]:
        raise ValueError(f"labels {labels.shape} do not match images {image_embeddings.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )
    classifier = jnp.asarray(classifier)
    n = image_embeddings.shape[0]
    ranks = []
    for start in range(0, n, chunk_size):
        images = image_embeddings[start : start + chunk_size]
        chunk_labels = labels[start : start + chunk_size].astype(np.int32)
        valid = images.shape[0]
        pad = chunk_size - valid
        images = np.pad(images, ((0, pad), (0, 0)))
        chunk_labels = np.pad(chunk_labels, (0, pad))
        ranks.append(np.asarray(_true_class_ranks_chunk(images, chunk_labels, classifier))[:valid])
    return np.concatenate(ranks) if ranks else np.zeros((0,), np.int32)


def _select(ranks: np.ndarray, labels: np.ndarray, mask: np.ndarray | None):
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != labels.shape:
            raise ValueError(f"mask {mask.shape} does not match labels {labels.shape}")
        ranks, labels = ranks[mask], labels[mask]
    if ranks.size == 0:
        raise ValueError("no examples to evaluate (empty input or all-False mask)")
    return ranks, labels


def _per_class_top1(ranks: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels, weights=(ranks == 0).astype(np.float64), minlength=num_classes)
    return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)


def per_class_accuracy(
    image_embeddings: np.ndarray | jax.Array,
    labels: np.ndarray | jax.Array,
    classifier: np.ndarray | jax.Array,
    mask: np.ndarray | None = None,
    chunk_size: int = 4096,
) -> np.ndarray:
    """Top-1 recall of every class.

    Args:
      image_embeddings: `[N, D]`.
      labels: `[N]` int in [0, C).
      classifier: `[C, D]`.
      mask: optional `[N]` bool; only True examples count.
      chunk_size: images scored at a time.

    Returns:
      `[C]` float64: the fraction of class c's (selected) examples predicted as c; NaN for
      classes without examples.
    """
    labels = np.asarray(labels)
    ranks = true_class_ranks(image_embeddings, labels, classifier, chunk_size)
    ranks, labels = _select(ranks, labels, mask)
    return _per_class_top1(ranks, labels, classifier.shape[0])


def zeroshot_metrics(
    image_embeddings: np.ndarray | jax.Array,
    labels: np.ndarray | jax.Array,
    classifier: np.ndarray | jax.Array,
    topk: Sequence[int] = (1, 5),
    mask: np.ndarray | None = None,
    chunk_size: int = 4096,
) -> dict[str, float]:
    """Zero-shot top-k accuracy and balanced (mean per-class) accuracy.

    Args:
      image_embeddings: `[N, D]`.
      labels: `[N]` int in [0, C).
      classifier: `[C, D]`, e.g. from `zeroshot_classifier`.
      topk: the k of the `top{k}` entries; a k larger than C is skipped (no `top5` with
        fewer than 5 classes).
      mask: optional `[N]` bool; metrics are computed over the True examples only (e.g. the
        images of held-out classes).
      chunk_size: images scored at a time.

    Returns:
      `{"top1": ..., "top5": ..., "mean_class_top1": ...}` as Python floats in [0, 1].
      `mean_class_top1` (named as in `classification_metrics`) is the mean over classes
      that have at least one selected example of their top-1 recall ("balanced accuracy";
      classes absent from the selection are left out, as in scikit-learn's
      `balanced_accuracy_score`).
    """
    labels = np.asarray(labels)
    num_classes = classifier.shape[0]
    ranks = true_class_ranks(image_embeddings, labels, classifier, chunk_size)
    ranks, labels = _select(ranks, labels, mask)
    metrics = {f"top{k}": float(np.mean(ranks < k)) for k in topk if k <= num_classes}
    metrics["mean_class_top1"] = float(np.nanmean(_per_class_top1(ranks, labels, num_classes)))
    return metrics
