"""Class-aware resampling of the training stream, and the class counts the losses need.

`data.sampling` picks how often each class is drawn (Kang et al. 2020, "Decoupling
Representation and Classifier for Long-Tailed Recognition", eq. 1: class c is drawn with
probability `n_c^q / sum_k n_k^q`):

- `'uniform'`: every example once per epoch, in a shuffled order (q = 1 in expectation). The
  default, and the pipeline's original shuffle, untouched.
- `'sqrt'`: square-root sampling, q = 1/2 (Mahajan et al. 2018).
- `'class_balanced'`: every class equally often, q = 0.

The two resampled streams draw, at every position of the endless stream, a class from those
probabilities and then one of its examples uniformly, with replacement (like torch's
`WeightedRandomSampler(replacement=True)`). The draw at position k uses a generator seeded by
`(seed, k)` alone, so the stream is a pure function of the seed: the same on any number of
processes, and a resumed run (grain's iterator state is a position) continues it exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from ml_collections import ConfigDict

# The exponent q of each `data.sampling`; None keeps the epoch-wise shuffle.
SAMPLING_EXPONENTS = {"uniform": None, "sqrt": 0.5, "class_balanced": 0.0}
# Tells the resampled index stream's seed apart from the batches' augmentation seed, so the
# two streams are not drawn from the same generators.
_INDEX_STREAM = 1
# Labels are read this many records at a time (array_record reads a list in parallel).
_READ_CHUNK = 4096


def check_sampling(sampling: str) -> None:
    if sampling not in SAMPLING_EXPONENTS:
        raise ValueError(
            f"unknown data.sampling {sampling!r}; choose from {list(SAMPLING_EXPONENTS)}"
        )


def index_stream(
    source: Sequence[dict[str, Any]], config: ConfigDict, seed: int
) -> grain.MapDataset:
    """The endless stream of example indices the `data` section `config` trains on, a
    function of `seed`.

    `data.sampling='uniform'` (or absent) is the epoch-wise shuffle (each epoch reshuffled);
    the others draw each position independently (see the module docstring) from the split's
    `data.label_key` labels.
    """
    sampling = config.get("sampling", "uniform")
    check_sampling(sampling)
    exponent = SAMPLING_EXPONENTS[sampling]
    positions = grain.MapDataset.range(len(source))
    if exponent is None:
        return positions.shuffle(seed=seed).repeat()
    draw = ResampledIndex(split_labels(source, config.get("label_key", "label")), exponent)
    stream_seed = int(np.random.SeedSequence((seed, _INDEX_STREAM)).generate_state(1)[0])
    return positions.repeat().random_map(draw, seed=stream_seed)


def split_labels(source: Sequence[dict[str, Any]], label_key: str) -> np.ndarray:
    """`[N]` int64 `label_key` of every example of `source`, in order, without decoding images.

    A tfds data source is re-opened with its image features left undecoded, so a label costs
    a record read rather than an image decode; any other sequence of dicts is read as it is.
    """
    if dataclasses.is_dataclass(source) and hasattr(source, "dataset_info"):  # a tfds source
        skip = {
            name: tfds.decode.SkipDecoding()
            for name, feature in source.dataset_info.features.items()
            if isinstance(feature, tfds.features.Image)
        }
        source = dataclasses.replace(source, decoders=skip)
    labels = []
    for start in range(0, len(source), _READ_CHUNK):
        keys = list(range(start, min(start + _READ_CHUNK, len(source))))
        records = (
            source.__getitems__(keys)
            if hasattr(source, "__getitems__")
            else [source[i] for i in keys]
        )
        for record in records:
            if label_key not in record:
                raise ValueError(
                    f"the training split has no {label_key!r} feature (data.label_key)"
                )
            labels.append(int(record[label_key]))
    return np.asarray(labels, np.int64)


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """`[C]` int64 number of examples of each class; a label outside [0, C) is an error."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )
    return np.bincount(labels, minlength=num_classes).astype(np.int64)


def class_probabilities(counts: np.ndarray, exponent: float) -> np.ndarray:
    """`[C]` float64 probability of drawing each class, `n_c^q / sum_k n_k^q`; 0 for a class
    without examples (nothing to draw)."""
    counts = np.asarray(counts, np.float64)
    weights = np.where(counts > 0, counts**exponent, 0.0)
    return weights / weights.sum()


class ResampledIndex:
    """`(position, rng) -> example index`, drawn class first, for `grain.MapDataset.random_map`.

    Args:
        labels: `[N]` int class of every example of the split.
        exponent: the class-frequency exponent q (0: class-balanced, 1/2: square root).
    """

    def __init__(self, labels: np.ndarray, exponent: float):
        labels = np.asarray(labels, np.int64)
        if not labels.size:
            raise ValueError("the training split is empty: there is nothing to sample")
        counts = np.bincount(labels)
        # Examples grouped by class: class c owns order[starts[c] : starts[c] + counts[c]].
        self.order = np.argsort(labels, kind="stable")
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.counts = counts
        cumulative = np.cumsum(class_probabilities(counts, exponent))
        # Dividing by the last entry makes it exactly 1.0 (x / x), so a uniform draw in
        # [0, 1) always lands on a class, and never on one without examples.
        self.cumulative = cumulative / cumulative[-1]

    def __call__(self, position: int, rng: np.random.Generator) -> int:
        del position  # the draw depends on it through `rng` (grain seeds it per position)
        label = int(np.searchsorted(self.cumulative, rng.random(), side="right"))
        return int(self.order[self.starts[label] + rng.integers(self.counts[label])])
