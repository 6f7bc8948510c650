"""Evaluation of an image-text model on one split: zero-shot classification and retrieval.

It needs only two encoders, `images -> embeddings` and `tokens -> embeddings`,
so it serves the trainer, a stand-alone evaluation command and converted
checkpoints alike. Zero-shot classification runs when the split has a `label`
feature with class names; its `heldout` flag, when present, adds the accuracy
on attribute combinations never seen in training (`zeroshot/heldout_top1`).
Retrieval runs over every caption of every image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxmm.data import pipeline
from jaxmm.data.tokenizer import Tokenizer
from jaxmm.evaluate.retrieval import retrieval_metrics
from jaxmm.evaluate.templates import get_templates
from jaxmm.evaluate.zeroshot import zeroshot_classifier, zeroshot_metrics

Encoder = Callable[[np.ndarray], Any]


def embed_images(
    encode_image: Encoder,
    source: Sequence[dict[str, Any]],
    data_config: ConfigDict,
    batch_size: int,
) -> np.ndarray:
    """`[N, E]` embeddings of every image of `source`, in order."""
    chunks = [
        np.asarray(encode_image(images))[:valid]
        for images, valid in pipeline.eval_batches(source, data_config, batch_size)
    ]
    return np.concatenate(chunks)


def embed_texts(encode_text: Encoder, tokens: np.ndarray, batch_size: int) -> np.ndarray:
    """`[M, E]` embeddings of `[M, L]` token rows, padding the last batch to `batch_size`."""
    chunks = []
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size]
        valid = len(batch)
        batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - valid, axis=0)])
        chunks.append(np.asarray(encode_text(batch))[:valid])
    return np.concatenate(chunks)


def evaluate_image_text(
    encode_image: Encoder,
    encode_text: Encoder,
    tokenizer: Tokenizer,
    source: Sequence[dict[str, Any]],
    data_config: ConfigDict,
    *,
    class_names: Sequence[str] | None,
    templates: str,
    batch_size: int,
    mesh: Mesh | None = None,
) -> dict[str, float]:
    """Metrics named `zeroshot/...` and `retrieval/...` for one split.

    Retrieval splits its candidates over `mesh` (default: every device); inside a trainer or
    evaluator running under `jax.set_mesh`, pass that mesh.
    """
    annotations = pipeline.split_annotations(source)
    image_embeddings = embed_images(encode_image, source, data_config, batch_size)
    tokenize = lambda texts: tokenizer(texts, context_length=data_config.context_length)
    metrics: dict[str, float] = {}

    if class_names is not None and annotations["labels"] is not None:
        classifier = zeroshot_classifier(
            encode_text, tokenize, class_names, get_templates(templates), batch_size=batch_size
        )
        labels = annotations["labels"]
        for key, value in zeroshot_metrics(image_embeddings, labels, classifier).items():
            metrics[f"zeroshot/{key}"] = value
        heldout = annotations["heldout"]
        if heldout is not None and heldout.any() and not heldout.all():
            for key, value in zeroshot_metrics(
                image_embeddings, labels, classifier, mask=heldout
            ).items():
                metrics[f"zeroshot/heldout_{key}"] = value
            for key, value in zeroshot_metrics(
                image_embeddings, labels, classifier, mask=~heldout
            ).items():
                metrics[f"zeroshot/seen_{key}"] = value

    captions = annotations["captions"]
    text_to_image = np.asarray([i for i, texts in enumerate(captions) for _ in texts], np.int32)
    if len(text_to_image):
        flat = [text for texts in captions for text in texts]
        text_embeddings = embed_texts(encode_text, tokenize(flat), batch_size)
        for key, value in retrieval_metrics(
            image_embeddings, text_embeddings, text_to_image, mesh=mesh
        ).items():
            metrics[f"retrieval/{key}"] = value
    return metrics
