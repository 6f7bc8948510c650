"""Scores a VQA model on a split: every question of every image, VQA-v2 soft accuracy.

Records hold one image and its questions (`questions`, `answers` joined by "\\n",
`question_types`, `heldout`), the layout of the built-in `vqa_shapes` and of user JSONL files.
Questions are flattened and answered in fixed-size batches of `(image, question)` pairs, the
last one padded so the jitted model compiles once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from absl import logging
from ml_collections import ConfigDict

from jaxmm.data import pipeline
from jaxmm.data.tokenizer import Tokenizer
from jaxmm.evaluate.vqa import split_answers, vqa_metrics

Predict = Callable[[tuple[np.ndarray, np.ndarray]], Any]  # (images, tokens) -> logits [B, V]
# Long enough to measure any question's true length, so truncation can be counted.
_UNTRUNCATED_LENGTH = 1024


def flatten_questions(source: Sequence[dict[str, Any]]) -> dict[str, list]:
    """Per question of the split, in order: its image's index, question, human answers, type
    and held-out flag."""
    flat = {key: [] for key in ("image_index", "question", "answers", "type", "heldout")}
    for index in range(len(source)):
        record = source[index]
        questions = record["questions"]
        types = record.get("question_types", [""] * len(questions))
        heldout = record.get("heldout", [False] * len(questions))
        for question, answers, kind, held in zip(
            questions, record["answers"], types, heldout, strict=True
        ):
            flat["image_index"].append(index)
            flat["question"].append(pipeline.as_text(question))
            flat["answers"].append(split_answers(answers))
            flat["type"].append(pipeline.as_text(kind))
            flat["heldout"].append(bool(held))
    return flat


def _batches(
    source: Sequence[dict[str, Any]],
    flat: dict[str, list],
    tokens: np.ndarray,
    data_config: ConfigDict,
    batch_size: int,
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """`(images [B, S, S, 3], tokens [B, L], num_valid)` over the flattened questions."""
    cached_index, cached_image = -1, None  # questions of one image are consecutive
    for start in range(0, len(tokens), batch_size):
        stop = min(start + batch_size, len(tokens))
        images = []
        for index in flat["image_index"][start:stop]:
            if index != cached_index:
                cached_index = index
                cached_image = pipeline.eval_image(source[index]["image"], data_config)
            images.append(cached_image)
        valid = stop - start
        pad = batch_size - valid
        batch_tokens = tokens[start:stop]
        if pad:
            images += [images[-1]] * pad
            batch_tokens = np.concatenate([batch_tokens, np.repeat(batch_tokens[-1:], pad, 0)])
        yield np.stack(images), batch_tokens, valid


def evaluate_vqa(
    predict: Predict,
    tokenizer: Tokenizer,
    source: Sequence[dict[str, Any]],
    data_config: ConfigDict,
    vocabulary: Sequence[str],
    batch_size: int,
) -> tuple[dict[str, float], dict[str, list]]:
    """VQA metrics of `predict` on every question of `source`.

    Args:
        predict: `(images, tokens) -> logits [B, len(vocabulary)]`.
        tokenizer: the run's tokenizer; questions longer than `data.context_length` are
            truncated (the end-of-text token kept) and counted in `vqa/truncated_questions`.
        source: the evaluation split's records.
        data_config: the config's `data` section (image size, normalisation, context).
        vocabulary: the answer of each logit.
        batch_size: questions per jitted call.

    Returns:
        `(metrics, predictions)`: `vqa/accuracy`, `vqa/accuracy_<type>`,
        `vqa/heldout_accuracy` (`jaxmm.evaluate.vqa.vqa_metrics`) and
        `vqa/truncated_questions`; and the flattened questions with a `prediction` list, for
        sample displays.
    """
    flat = flatten_questions(source)
    if not flat["question"]:
        raise ValueError("the evaluation split has no questions")
    context = data_config.context_length
    full = tokenizer(flat["question"], context_length=_UNTRUNCATED_LENGTH)
    truncated = int(((full != 0).sum(axis=1) > context).sum())
    if truncated:
        logging.warning(
            "%d of %d questions are longer than data.context_length=%d tokens and were cut",
            truncated,
            len(full),
            context,
        )
    tokens = tokenizer(flat["question"], context_length=context)
    answer_ids = []
    for images, batch_tokens, valid in _batches(source, flat, tokens, data_config, batch_size):
        logits = np.asarray(predict((images, batch_tokens)))[:valid]
        answer_ids.append(logits.argmax(axis=-1))
    flat["prediction"] = [vocabulary[i] for i in np.concatenate(answer_ids)]
    metrics = vqa_metrics(flat["prediction"], flat["answers"], flat["type"], flat["heldout"])
    metrics["vqa/truncated_questions"] = float(truncated)
    return metrics, flat
