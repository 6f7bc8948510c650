"""`longtail_shapes`: a built-in long-tailed classification set drawn from `clip_shapes`.

The 48 colour x shape classes of `clip_shapes` (one object per image), with a training split
whose class sizes follow the exponential profile of CIFAR-LT (Cui et al. 2019, "Class-Balanced
Loss Based on Effective Number of Samples", section 6):

    n_r = round(max_per_class * imbalance_ratio ** (-r / (C - 1))),   r = 0 .. C-1,

so the largest class holds `max_per_class` images and the smallest `imbalance_ratio` times
fewer (at least one). The test split is balanced (`test_per_class` images of every class),
so its plain accuracy is the balanced accuracy the long-tail literature reports.

The rank `r` of each class is a seeded permutation of the classes rather than their index:
the class order of `clip_shapes` is colour-major, and ranking by index would make every
rare class pink or purple, confounding "rare class" with "rare colour".

Needs no download; every example is a pure function of `(config, split, index)`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from jaxmm.data import shapes

# All 48 classes are trained: nothing is held out (that is `clip_shapes`' zero-shot test).
_SHAPES_CONFIG = shapes.ClipShapesConfig(name="longtail", held_out=())
_SPLIT_IDS = {"train": 0, "test": 1}


@dataclasses.dataclass(eq=False)
class LongtailShapesConfig(tfds.core.BuilderConfig):
    """Knobs of the long-tailed set; tfds caches a build by config name.

    Attributes:
        max_per_class: Training images of the most frequent class.
        imbalance_ratio: Largest over smallest training class size.
        test_per_class: Test images of every class (a balanced split).
        seed: Seeds the class ranking and every image.
    """

    max_per_class: int = 500
    imbalance_ratio: float = 100.0
    test_per_class: int = 50
    seed: int = 0

    def __post_init__(self):
        if self.max_per_class < 1 or self.test_per_class < 1 or self.imbalance_ratio < 1:
            raise ValueError(
                f"longtail_shapes config {self.name!r}: max_per_class and test_per_class must be "
                f">= 1 and imbalance_ratio >= 1, got {self.max_per_class}, "
                f"{self.test_per_class}, {self.imbalance_ratio}"
            )

    @property
    def class_names(self) -> tuple[str, ...]:
        return _SHAPES_CONFIG.class_names

    @functools.cached_property
    def train_counts(self) -> np.ndarray:
        """`[C]` int64 training images per class (indexed by class, not by rank)."""
        return longtail_counts(len(self.class_names), self.max_per_class, self.imbalance_ratio)[
            class_ranks(len(self.class_names), self.seed)
        ]

    @functools.cached_property
    def train_labels(self) -> np.ndarray:
        """`[N]` int64 label of each training example, in stored order (a seeded shuffle)."""
        labels = np.repeat(np.arange(len(self.train_counts)), self.train_counts)
        return np.random.default_rng((self.seed, 2)).permutation(labels)

    @property
    def split_sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train_labels),
            "test": self.test_per_class * len(self.class_names),
        }

    def label(self, split: str, index: int) -> int:
        if split == "train":
            return int(self.train_labels[index])
        return index % len(self.class_names)  # the test split cycles through the classes


def longtail_counts(num_classes: int, max_per_class: int, imbalance_ratio: float) -> np.ndarray:
    """`[C]` int64 sizes by frequency rank: `max_per_class * ratio ** (-r / (C - 1))`, >= 1."""
    exponent = np.arange(num_classes) / max(num_classes - 1, 1)
    counts = np.round(max_per_class * float(imbalance_ratio) ** -exponent)
    return np.maximum(counts, 1).astype(np.int64)


def class_ranks(num_classes: int, seed: int) -> np.ndarray:
    """`[C]` frequency rank of each class (0: the most frequent), a seeded permutation."""
    return np.random.default_rng((seed, 1)).permutation(num_classes)


def generate_example(config: LongtailShapesConfig, split: str, index: int) -> dict[str, Any]:
    """The example stored at `split[index]`: one object of its class, as numpy."""
    rng = np.random.default_rng((config.seed, _SPLIT_IDS[split], index))
    example = shapes.render_example(rng, _SHAPES_CONFIG, config.label(split, index))
    return {
        "image": example["image"],
        "label": example["label"],
        "colour": example["colour"],
        "shape": example["shape"],
        "image_id": f"{split}/{index:06d}",
    }


class LongtailShapes(tfds.core.GeneratorBasedBuilder):
    """`clip_shapes`' 48 classes with an exponentially long-tailed training split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        LongtailShapesConfig(
            name="default",
            description="Imbalance ratio 100, 500 to 5 training images a class, 50 test.",
        ),
        LongtailShapesConfig(
            name="smoke",
            max_per_class=20,
            test_per_class=2,
            description="A seconds-long build for smoke tests.",
        ),
    ]
    builder_config: LongtailShapesConfig
    # As for `clip_shapes`: point tfds at this file rather than its package lookup.
    code_path = epath.Path(__file__)

    def __init__(self, *, file_format: str | None = None, **kwargs: Any):
        # array_record: no TensorFlow needed, and the random access grain wants.
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = _SHAPES_CONFIG.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "clip_shapes' 48 colour x shape classes, one object per image, with a "
                "long-tailed training split and a balanced test split."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=list(_SHAPES_CONFIG.class_names)),
                    "colour": tfds.features.ClassLabel(names=list(shapes.COLOUR_NAMES)),
                    "shape": tfds.features.ClassLabel(names=list(shapes.SHAPES)),
                    "image_id": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # procedural: nothing to download
        sizes = self.builder_config.split_sizes
        return {split: self._generate_examples(split, n) for split, n in sizes.items()}

    def _generate_examples(self, split: str, num: int) -> Iterator[tuple[int, dict[str, Any]]]:
        for index in range(num):
            example = generate_example(self.builder_config, split, index)
            buffer = io.BytesIO()
            Image.fromarray(example.pop("image")).save(buffer, format="PNG")
            yield index, {"image": buffer.getvalue(), **example}
