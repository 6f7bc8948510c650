"""Input pipelines: tfds array_record data sources read through grain.

Every image-text builder in jaxmm (the built-in `clip_shapes` and the user-data
builders) yields the same keys: `image` (uint8 `[H, W, 3]`), `captions` (all
captions of the image) and `image_id`; classification-style ones add `label`.
Classification datasets (tfds ones such as `cifar10`, the `image_folder` builder)
need only `image` and a class feature (`data.label_key`, `label` by default).

Training: shuffle (reshuffled each epoch) -> repeat -> global batch of indices ->
this process's slice of it -> batched read -> per-example augmentation and target (a
tokenised random caption, or the label).
grain derives each batch's random generator from the seed and the batch's position,
and every example of the global batch gets its own generator drawn from it, so the
stream is deterministic and does not depend on how many processes share the batch: a
run on 2 hosts trains on exactly the examples, crops and captions of a run on one.
The iterator state (a position) is checkpointed with the model; a resumed run sees
exactly the batches an uninterrupted one would, on any number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from ml_collections import ConfigDict

from jaxmm.data import augment, batch_augment, image_ops, text_augment
from jaxmm.data.sampling import index_stream
from jaxmm.data.tokenizer import Tokenizer


def as_text(value: bytes | str) -> str:
    """Text features come back as bytes from real data and as str under `tfds.testing.mock_data`."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def augment_image(image: np.ndarray, rng: np.random.Generator, config: ConfigDict) -> np.ndarray:
    """Training view of `uint8 [H, W, 3]`: random-resized (or padded random) crop, optional
    flip, ColorJitter, RandAugment, normalise, random erasing; the optional steps are
    `config`'s switches described in `jaxmm.data.augment`, all off by default."""
    image = augment.crop(image, rng, config)
    if config.flip and rng.random() < 0.5:
        image = image[:, ::-1]
    image = augment.photometric(image, rng, config)
    return augment.erase(image_ops.normalize(image, config.mean, config.std), rng, config)


def image_text_example(
    example: dict[str, Any],
    rng: np.random.Generator,
    *,
    tokenizer: Tokenizer,
    config: ConfigDict,
) -> dict[str, np.ndarray]:
    """One contrastive training example: the augmented image and one random caption.

    The caption goes through EDA (`jaxmm/data/text_augment.py`) when `config.text_augment`
    turns an operation on.
    """
    # The image draws from `rng` first: changing the order would change every run's stream.
    image = augment_image(example["image"], rng, config)
    captions = example["captions"]
    caption = as_text(captions[rng.integers(len(captions))])
    # Off (the default) draws nothing from `rng`, so existing runs keep their stream.
    if augment_text := text_augment.from_config(config.get("text_augment")):
        caption = augment_text(caption, rng)
    return {"image": image, "tokens": tokenizer(caption, context_length=config.context_length)[0]}


def image_label_example(
    example: dict[str, Any], rng: np.random.Generator, *, config: ConfigDict
) -> dict[str, np.ndarray]:
    """One classification training example: the augmented image and its `label_key` class."""
    return {
        "image": augment_image(example["image"], rng, config),
        "label": np.int32(example[config.label_key]),
    }


ExampleFn = Callable[[dict[str, Any], np.random.Generator], dict[str, np.ndarray]]


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
    example_fn: ExampleFn,
    process_slice: slice,
    mixing: batch_augment.Mixing | None = None,
) -> dict[str, np.ndarray]:
    """This process's part of one global batch of `indices`, read, augmented and, with
    `mixing`, MixUp/CutMix-ed in pairs (`jaxmm.data.batch_augment`)."""
    # One seed per example of the *global* batch, drawn before slicing, so an example's
    # augmentation is the same whichever process reads it.
    seeds = rng.integers(2**63, size=len(indices))[process_slice]
    examples = [
        example_fn(example, np.random.default_rng(seed))
        for example, seed in zip(_read_batch(source, indices[process_slice]), seeds, strict=True)
    ]
    batch = {key: np.stack([example[key] for example in examples]) for key in examples[0]}
    if mixing is None:
        return batch
    # Drawn after the examples' seeds, so they are unchanged; one per pair of the global batch.
    pair_seeds = rng.integers(2**63, size=len(indices) // 2)
    pairs = slice(process_slice.start // 2, process_slice.stop // 2)
    return batch_augment.mix_batch(
        batch, [np.random.default_rng(seed) for seed in pair_seeds[pairs]], mixing
    )


def eval_image(image: np.ndarray, config: ConfigDict) -> np.ndarray:
    """Deterministic evaluation view: central square crop, resize, normalise.

    The square spans `config.eval_crop_fraction` of the shorter side (ImageNet's classic
    "resize to 256, crop 224" is 0.875; absent means 1, the whole square).
    """
    fraction = config.get("eval_crop_fraction", 1.0)
    box = image_ops.center_crop_box(image.shape[0], image.shape[1], fraction)
    return image_ops.normalize(
        image_ops.crop_resize(image, box, config.image_size), config.mean, config.std
    )


def _checked_augmentation(
    source: Sequence[dict[str, Any]],
    example_fn: ExampleFn,
    config: ConfigDict,
    batch_size: int,
    local_batch: int,
) -> tuple[batch_augment.Mixing | None, int]:
    """The batch-level augmentation (mixing, repeat count), every augmentation setting
    checked here, so that a bad one fails now with one line, not later in a reader thread."""
    augment.check(config)
    mixing = batch_augment.Mixing.from_config(config)
    repeats = batch_augment.repeats(config, batch_size)
    batch_augment.check_pairs(mixing, local_batch)
    if mixing is not None or repeats > 1:  # only image classification examples may be mixed
        first = example_fn(source[0], np.random.default_rng(0))
        batch_augment.check_example(first, mixing, repeats)
    return mixing, repeats


def train_iterator(
    source: Sequence[dict[str, Any]],
    example_fn: ExampleFn,
    config: ConfigDict,
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of this process's slices of the global batches.

    Args:
        source: a random-access data source (`builder.as_data_source(split)`).
        example_fn: `(example, rng) -> arrays`, e.g. `partial(image_text_example, ...)`; the
            batch stacks its outputs key by key.
        config: the `data` section of the experiment config.
        batch_size: the global batch size; each process gets `batch_size // process_count`
            consecutive examples of every global batch.
        process_index, process_count: this process's place in a multi-process run.
    """
    if not len(source):
        raise ValueError("the training split is empty: there is nothing to train on")
    if batch_size % process_count:
        raise ValueError(f"batch_size={batch_size} is not divisible by {process_count} processes")
    local = batch_size // process_count
    mixing, repeats = _checked_augmentation(source, example_fn, config, batch_size, local)
    # Shuffle and batch example *indices*, then read and augment this process's part of
    # each batch at once; grain seeds each batch's generator from (seed, batch position).
    dataset = (
        index_stream(source, config, seed)  # shuffled, or resampled by `data.sampling`
        .batch(batch_augment.distinct_per_batch(batch_size, repeats), drop_remainder=True)
        .map(partial(batch_augment.repeat_in_batch, count=repeats, batch_size=batch_size))
        .random_map(
            partial(
                _train_batch,
                source=source,
                example_fn=example_fn,
                process_slice=slice(process_index * local, (process_index + 1) * local),
                mixing=mixing,
            ),
            seed=seed,
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


def split_annotations(source: Sequence[dict[str, Any]], label_key: str = "label") -> dict[str, Any]:
    """Everything but the images of a split, in order: captions, labels, held-out flags.

    `captions` is empty for datasets without them (classification datasets).
    """
    captions, labels, heldout = [], [], []
    for index in range(len(source)):
        example = source[index]
        if "captions" in example:
            captions.append([as_text(c) for c in example["captions"]])
        if label_key in example:
            labels.append(int(example[label_key]))
        if "heldout" in example:
            heldout.append(bool(example["heldout"]))
    return {
        "captions": captions,
        "labels": np.asarray(labels, np.int32) if labels else None,
        "heldout": np.asarray(heldout, bool) if heldout else None,
    }


def class_names(builder: tfds.core.DatasetBuilder, label_key: str = "label") -> list[str] | None:
    """Names of the `label_key` class feature, when the dataset has one."""
    features = builder.info.features
    if label_key in features and hasattr(features[label_key], "names"):
        return list(features[label_key].names)
    return None
