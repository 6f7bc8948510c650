"""Input pipelines: tfds array_record data sources read through grain.

Every image-text builder in jaxmm (the built-in `clip_shapes` and the user-data
builders) yields the same keys: `image` (uint8 `[H, W, 3]`), `captions` (all
captions of the image) and `image_id`; classification-style ones add `label`.

Training: process shard -> shuffle (reshuffled each epoch) -> repeat -> batch of
indices -> batched read -> per-example random crop/flip/caption choice/tokenisation.
grain derives each batch's random generator from the seed and the batch's position,
so the stream is deterministic and its iterator state (a position) is checkpointed with
the model; a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from ml_collections import ConfigDict

from jaxmm.data import image_ops
from jaxmm.data.tokenizer import Tokenizer


def as_text(value: bytes | str) -> str:
    """Text features come back as bytes from real data and as str under `tfds.testing.mock_data`."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def train_preprocess(
    example: dict[str, Any],
    rng: np.random.Generator,
    *,
    tokenizer: Tokenizer,
    config: ConfigDict,
) -> dict[str, np.ndarray]:
    """One training example: random-resized crop, optional flip, one random caption."""
    image = example["image"]
    box = image_ops.random_resized_crop_box(
        rng, image.shape[0], image.shape[1], tuple(config.crop_scale), tuple(config.crop_ratio)
    )
    image = image_ops.crop_resize(image, box, config.image_size)
    if config.flip and rng.random() < 0.5:
        image = image[:, ::-1]
    captions = example["captions"]
    caption = as_text(captions[rng.integers(len(captions))])
    return {
        "image": image_ops.normalize(image, config.mean, config.std),
        "tokens": tokenizer(caption, context_length=config.context_length)[0],
    }


def _read_batch(source: Sequence[dict[str, Any]], indices: np.ndarray) -> list[dict[str, Any]]:
    # array_record reads a list of records in parallel: about 3x faster than one by one.
    if hasattr(source, "__getitems__"):
        return source.__getitems__(indices.tolist())
    return [source[int(i)] for i in indices]


def _train_batch(
    indices: np.ndarray,
    rng: np.random.Generator,
    *,
    source: Sequence[dict[str, Any]],
    tokenizer: Tokenizer,
    config: ConfigDict,
) -> dict[str, np.ndarray]:
    examples = [
        train_preprocess(example, rng, tokenizer=tokenizer, config=config)
        for example in _read_batch(source, indices)
    ]
    return {key: np.stack([example[key] for example in examples]) for key in examples[0]}


def eval_image(image: np.ndarray, config: ConfigDict) -> np.ndarray:
    """Deterministic evaluation view: central square crop, resize, normalise."""
    box = image_ops.center_crop_box(image.shape[0], image.shape[1])
    return image_ops.normalize(
        image_ops.crop_resize(image, box, config.image_size), config.mean, config.std
    )


def train_iterator(
    source: Sequence[dict[str, Any]],
    tokenizer: Tokenizer,
    config: ConfigDict,
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of `{'image', 'tokens'}` batches for this process.

    Args:
        source: a random-access data source (`builder.as_data_source(split)`).
        config: the `data` section of the experiment config.
        batch_size: examples per batch on this process (global batch / process count).
    """
    if len(source) < process_count:
        raise ValueError(f"a split of {len(source)} examples cannot feed {process_count} processes")
    # Shuffle and batch example *indices*, then read and augment a whole batch at
    # once; grain seeds each batch's generator from (seed, batch position).
    dataset = (
        grain.MapDataset.range(len(source))
        .slice(slice(process_index, None, process_count))
        .shuffle(seed=seed)
        .repeat()
        .batch(batch_size, drop_remainder=True)
        .random_map(
            partial(_train_batch, source=source, tokenizer=tokenizer, config=config), seed=seed
        )
    )
    read_options = grain.ReadOptions(num_threads=config.num_threads, prefetch_buffer_size=2)
    return iter(dataset.to_iter_dataset(read_options))


def eval_batches(
    source: Sequence[dict[str, Any]],
    config: ConfigDict,
    batch_size: int,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[tuple[np.ndarray, int]]:
    """Yields `(images [batch_size, S, S, 3], num_valid)` over the whole split, in order.

    The last batch is padded with copies of its final image so that every batch has
    the same shape and the jitted encoder compiles once.
    """
    transform = transform or partial(eval_image, config=config)
    for start in range(0, len(source), batch_size):
        images = [
            transform(source[i]["image"])
            for i in range(start, min(start + batch_size, len(source)))
        ]
        valid = len(images)
        images += [images[-1]] * (batch_size - valid)
        yield np.stack(images), valid


def split_annotations(source: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Everything but the images of a split, in order: captions, labels, held-out flags."""
    captions, labels, heldout = [], [], []
    for index in range(len(source)):
        example = source[index]
        captions.append([as_text(c) for c in example["captions"]])
        if "label" in example:
            labels.append(int(example["label"]))
        if "heldout" in example:
            heldout.append(bool(example["heldout"]))
    return {
        "captions": captions,
        "labels": np.asarray(labels, np.int32) if labels else None,
        "heldout": np.asarray(heldout, bool) if heldout else None,
    }


def class_names(builder: tfds.core.DatasetBuilder) -> list[str] | None:
    """Names of the `label` feature, when the dataset has one."""
    features = builder.info.features
    if "label" in features and hasattr(features["label"], "names"):
        return list(features["label"].names)
    return None
