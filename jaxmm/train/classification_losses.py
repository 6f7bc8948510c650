"""The per-example classification loss a config asks for (`config.classification_loss`).

`name` picks one of the losses of `jaxmm.losses`; the other fields are its knobs, ignored by
the losses that do not take them:

- `'softmax_ce'`: softmax cross-entropy, with `config.label_smoothing` (the default).
- `'focal'`: softmax focal loss, `gamma`.
- `'sigmoid_focal'`: one sigmoid per class, focal, `gamma` and `alpha` (torchvision's).
- `'class_balanced'`: the loss named by `base` (`'softmax_ce'`, `'focal'` or
  `'sigmoid_focal'`), each example weighted by its class's effective-number weight, `beta`
  (Cui et al. 2019).
- `'logit_adjusted'`: softmax cross-entropy of the logits shifted by `tau` times the log
  class priors (Menon et al. 2021); predictions use the unshifted logits.

The last two need the training split's class counts, which the task reads once. Nothing
here reads data or configs' packages: the objectives import it on bare accelerator hosts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import numpy as np

from jaxmm import losses

ExampleLoss = Callable[[jax.Array, jax.Array], jax.Array]  # (logits [B, C], labels [B]) -> [B]

LOSSES = ("softmax_ce", "focal", "sigmoid_focal", "class_balanced", "logit_adjusted")
BASES = ("softmax_ce", "focal", "sigmoid_focal")  # what class_balanced may weigh
_NEED_COUNTS = frozenset({"class_balanced", "logit_adjusted"})
_SMOOTHABLE = frozenset({"softmax_ce", "logit_adjusted"})


def needs_class_counts(loss_config: Mapping | None) -> bool:
    """Whether the loss of `config.classification_loss` is built from class counts."""
    return _name(loss_config) in _NEED_COUNTS


def _name(loss_config: Mapping | None) -> str:
    name = (loss_config or {}).get("name", "softmax_ce")
    if name not in LOSSES:
        raise ValueError(f"unknown classification_loss.name {name!r}; choose from {list(LOSSES)}")
    return name


def make_example_loss(
    loss_config: Mapping | None,
    label_smoothing: float = 0.0,
    class_counts: np.ndarray | None = None,
) -> ExampleLoss:
    """`(logits [B, C], labels [B]) -> [B]` float32 loss of each example.

    Args:
        loss_config: `config.classification_loss`; None is the plain softmax cross-entropy.
        label_smoothing: `config.label_smoothing`, for the softmax cross-entropies.
        class_counts: `[C]` training examples of each class, for the losses that need them.
    """
    loss_config = loss_config or {}
    name = _name(loss_config)
    base = loss_config.get("base", "softmax_ce") if name == "class_balanced" else name
    if base not in BASES and name == "class_balanced":
        raise ValueError(f"unknown classification_loss.base {base!r}; choose from {list(BASES)}")
    if label_smoothing and base not in _SMOOTHABLE:
        raise ValueError(
            f"label_smoothing={label_smoothing} applies to softmax cross-entropies, not to "
            f"classification_loss {name!r} (base {base!r}); set it to 0"
        )
    gamma = float(loss_config.get("gamma", 2.0))
    if gamma < 0:
        raise ValueError(f"classification_loss.gamma must be >= 0, got {gamma}")
    if name in _NEED_COUNTS and class_counts is None:
        raise ValueError(f"classification_loss {name!r} needs the training split's class counts")

    if name == "logit_adjusted":
        log_priors = losses.log_class_priors(class_counts)
        tau = float(loss_config.get("tau", 1.0))
        return lambda logits, labels: losses.logit_adjusted_cross_entropy(
            logits, labels, log_priors, tau, label_smoothing
        )
    unweighted = {
        "softmax_ce": lambda logits, labels: losses.softmax_cross_entropy_per_example(
            logits, labels, label_smoothing
        ),
        "focal": lambda logits, labels: losses.softmax_focal_loss(logits, labels, gamma),
        "sigmoid_focal": lambda logits, labels: losses.sigmoid_focal_loss(
            logits, labels, gamma, float(loss_config.get("alpha", 0.25))
        ),
    }[base]
    if name != "class_balanced":
        return unweighted
    beta = float(loss_config.get("beta", 0.9999))
    if not 0 <= beta < 1:
        raise ValueError(f"classification_loss.beta must be in [0, 1), got {beta}")
    weights = losses.class_balanced_weights(class_counts, beta)
    return lambda logits, labels: weights[labels] * unweighted(logits, labels)
