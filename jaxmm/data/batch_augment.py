"""Augmentations across the examples of a global batch: MixUp, CutMix, repeated augmentation.

MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) pair example 2k with 2k + 1 of the
*global* batch and mix each into the other with one weight `lam` per pair (timm's
`mode='pair'`): MixUp blends the images, `lam * own + (1 - lam) * partner`; CutMix pastes
the partner's pixels into a box of area about `1 - lam` and then sets `lam` to the exact
area the example kept (timm's `correct_lam`). Per pair, as timm's `Mixup`: with probability
`prob` it mixes at all; with both alphas set, CutMix is chosen with probability
`switch_prob`; `lam ~ Beta(alpha, alpha)`. The batch gains `mix_label` (the partner's
label) and `mix_lambda` (the weight of the own label); the classification loss is
`lam * CE(label) + (1 - lam) * CE(mix_label)`, which equals timm's cross-entropy against
the mixed (and smoothed) one-hot targets.

Why pairs: the two examples of a pair sit side by side in the global batch, so with an
even per-process batch both are read by the same process and every process count mixes
the same pairs with the same draws (each pair has its own generator, drawn from the
batch's generator after the examples' seeds, so runs without mixing are unchanged).

Only `{'image', 'label'}` batches are mixed. Contrastive training refuses mixing: a
mixed image matches neither caption, and soft image-text targets would change the loss
itself, so `data.mixup_alpha`/`cutmix_alpha` are an error there (likewise for the other
tasks with more than an image and a label).

Repeated augmentation (Hoffer et al. 2020; DeiT's `repeated_aug`): each global batch holds
`ceil(batch_size / r)` distinct images, each `r` times (the last copies cut short when `r`
does not divide the batch); the copies are augmented independently since every example
of the batch has its own generator. The copies are laid out as `r` consecutive blocks
(`[a b c, a b c, ...]`), so they land in different processes' slices as DeiT's sampler
spreads them over GPUs, and a MixUp pair never holds two copies of one image.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from ml_collections import ConfigDict

MIXED_KEYS = frozenset({"image", "label"})


@dataclasses.dataclass(frozen=True)
class Mixing:
    """timm's `Mixup` switches: Beta concentrations (0 = off), the probability of mixing a
    pair at all and of CutMix rather than MixUp when both are on."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    @classmethod
    def from_config(cls, config: ConfigDict) -> Mixing | None:
        """The `data` section's mixing, None when both alphas are 0; bad values raise."""
        mixing = cls(
            mixup_alpha=config.get("mixup_alpha", 0.0),
            cutmix_alpha=config.get("cutmix_alpha", 0.0),
            prob=config.get("mix_prob", 1.0),
            switch_prob=config.get("mix_switch_prob", 0.5),
        )
        for name, value in (
            ("mixup_alpha", mixing.mixup_alpha),
            ("cutmix_alpha", mixing.cutmix_alpha),
        ):
            if value < 0:
                raise ValueError(f"data.{name} must be >= 0 (0 turns it off), got {value}")
        for name, value in (("mix_prob", mixing.prob), ("mix_switch_prob", mixing.switch_prob)):
            if not 0 <= value <= 1:
                raise ValueError(f"data.{name} must be in [0, 1], got {value}")
        return mixing if mixing.mixup_alpha or mixing.cutmix_alpha else None

    def draw(self, rng: np.random.Generator) -> tuple[float, bool]:
        """`(lam, use_cutmix)` for one pair; lam = 1 leaves it unmixed."""
        if self.mixup_alpha and self.cutmix_alpha:
            use_cutmix = bool(rng.random() < self.switch_prob)
        else:
            use_cutmix = bool(self.cutmix_alpha)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        if rng.random() >= self.prob:
            return 1.0, False
        return lam, use_cutmix


def cutmix_box(
    rng: np.random.Generator, height: int, width: int, lam: float
) -> tuple[int, int, int, int]:
    """`(top, left, bottom, right)` of a box covering about `1 - lam` of the image.

    Its sides are `sqrt(1 - lam)` of the image's, its centre uniform over the image, and it
    is clipped at the borders (so it may cover less; the caller measures the kept area).
    """
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    return int(top), int(left), int(bottom), int(right)


def mix_pair(
    first: np.ndarray, second: np.ndarray, rng: np.random.Generator, mixing: Mixing
) -> tuple[np.ndarray, np.ndarray, float]:
    """Two images `[H, W, C]` mixed into each other with one draw: `(first', second', lam)`,
    `lam` the share of each image that is its own."""
    lam, use_cutmix = mixing.draw(rng)
    if lam == 1.0:
        return first, second, 1.0
    if not use_cutmix:
        return lam * first + (1 - lam) * second, lam * second + (1 - lam) * first, lam
    height, width = first.shape[:2]
    top, left, bottom, right = cutmix_box(rng, height, width, lam)
    region = (slice(top, bottom), slice(left, right))
    first_mixed, second_mixed = first.copy(), second.copy()
    first_mixed[region], second_mixed[region] = second[region], first[region]
    kept = 1.0 - (bottom - top) * (right - left) / (height * width)
    return first_mixed, second_mixed, kept


def mix_batch(
    batch: dict[str, np.ndarray], rngs: list[np.random.Generator], mixing: Mixing
) -> dict[str, np.ndarray]:
    """An `{'image', 'label'}` batch of `2 len(rngs)` examples, pairs (2k, 2k + 1) mixed with
    `rngs[k]`: the batch plus `mix_label` int32 `[B]` and `mix_lambda` float32 `[B]`."""
    images, labels = batch["image"], batch["label"]
    if len(images) != 2 * len(rngs):
        raise ValueError(f"{len(images)} examples do not make {len(rngs)} pairs")
    mixed = np.empty_like(images)
    lambdas = np.ones(len(images), np.float32)
    for k, rng in enumerate(rngs):
        i, j = 2 * k, 2 * k + 1
        mixed[i], mixed[j], lam = mix_pair(images[i], images[j], rng, mixing)
        lambdas[i] = lambdas[j] = lam
    partners = np.arange(len(images)) ^ 1  # 2k <-> 2k + 1
    return {
        **batch,
        "image": mixed,
        "mix_label": labels[partners].astype(np.int32),
        "mix_lambda": lambdas,
    }


def repeats(config: ConfigDict, batch_size: int) -> int:
    """`data.repeated_augmentations` (1: off), checked against the global batch."""
    count = config.get("repeated_augmentations", 1)
    if not 1 <= count <= batch_size // 2:
        raise ValueError(
            f"data.repeated_augmentations={count} must be in [1, batch_size / 2] "
            f"(batch_size={batch_size})"
        )
    return count


def distinct_per_batch(batch_size: int, count: int) -> int:
    """How many distinct images a global batch holds with `count` repeats (the last copy of
    the block is cut short when `count` does not divide the batch, e.g. 3 into 1024)."""
    return -(-batch_size // count)


def repeat_in_batch(indices: np.ndarray, count: int, batch_size: int) -> np.ndarray:
    """`[distinct_per_batch]` indices -> `[batch_size]`: the block repeated `count` times."""
    return np.tile(indices, count)[:batch_size]


def check_pairs(mixing: Mixing | None, local_batch: int) -> None:
    """Mixing needs both examples of every pair in one process: an even per-process batch."""
    if mixing is not None and local_batch % 2:
        raise ValueError(
            f"MixUp/CutMix pair neighbouring examples: the per-process batch ({local_batch}) "
            "must be even"
        )


def check_example(example: dict[str, Any], mixing: Mixing | None, count: int) -> None:
    """Refuses batch-level augmentation for examples other than an image and a label."""
    if (mixing is None and count == 1) or set(example) == MIXED_KEYS:
        return
    switches = "data.mixup_alpha/cutmix_alpha" if mixing else "data.repeated_augmentations"
    raise ValueError(
        f"{switches} apply to image classification ({{'image', 'label'}} examples) only; this "
        f"task's examples have {sorted(example)}: turn them off (see jaxmm/data/batch_augment.py)"
    )
