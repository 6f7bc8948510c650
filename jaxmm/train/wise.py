"""WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models"): weight-space
ensembles of a zero-shot model and its fine-tuned version.

    theta(alpha) = (1 - alpha) * theta_zeroshot + alpha * theta_finetuned

over every floating-point variable, parameters and BatchNorm statistics alike (the paper's
code interpolates the whole state dict). alpha = 1 is the fine-tuned model, alpha = 0 the
zero-shot one; the paper finds intermediate alphas (0.5 is its default) more robust under
distribution shift than either end, at no extra inference cost.

`config.wise_alpha` (a float or a tuple to sweep) asks the trainer and `python -m
jaxmm.evaluate` to also evaluate these interpolations of a run started from
`config.init_from`, reporting metrics under `wise{alpha}/...`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import traverse_util
from ml_collections import ConfigDict


def wise_alphas(config: ConfigDict) -> tuple[float, ...]:
    """The interpolations `config.wise_alpha` asks for, besides the fine-tuned model itself
    (alpha 1, evaluated anyway).

    Raises:
        ValueError: an alpha outside [0, 1], or alphas other than 1 without `init_from` (the
            zero-shot end of the interpolation).
    """
    alpha = config.get("wise_alpha", 1.0)
    alphas = tuple(float(a) for a in (alpha if isinstance(alpha, (tuple, list)) else (alpha,)))
    outside = [a for a in alphas if not 0.0 <= a <= 1.0]
    if outside:
        raise ValueError(f"wise_alpha={alpha}: {outside} not in [0, 1]")
    alphas = tuple(dict.fromkeys(a for a in alphas if a != 1.0))  # unique, in order
    if alphas and not config.get("init_from"):
        raise ValueError(
            f"wise_alpha={alpha} interpolates towards the zero-shot model of init_from, "
            "but init_from is empty"
        )
    return alphas


def _flat(variables: Any) -> dict[tuple[str, ...], Any]:
    return traverse_util.flatten_dict(nn.unbox(dict(variables)))


def check_compatible(zeroshot: Any, finetuned: Any) -> None:
    """Raises ValueError naming every variable path that is in only one of the two trees or
    shaped differently (e.g. a classifier fine-tuned with a new head)."""
    flat_zero, flat_fine = _flat(zeroshot), _flat(finetuned)
    problems = [f"only in the zero-shot model: {'/'.join(p)}" for p in flat_zero.keys() - flat_fine]
    problems += [
        f"only in the fine-tuned model: {'/'.join(p)}" for p in flat_fine.keys() - flat_zero
    ]
    problems += [
        f"{'/'.join(p)}: zero-shot {tuple(flat_zero[p].shape)}, "
        f"fine-tuned {tuple(flat_fine[p].shape)}"
        for p in flat_zero.keys() & flat_fine.keys()
        if tuple(flat_zero[p].shape) != tuple(flat_fine[p].shape)
    ]
    if problems:
        raise ValueError(
            "WiSE-FT needs the zero-shot and fine-tuned models to have the same variables:\n  "
            + "\n  ".join(sorted(problems))
        )


def interpolate(zeroshot: Any, finetuned: Any, alpha: float) -> dict[str, Any]:
    """`(1 - alpha) * zeroshot + alpha * finetuned` on every floating-point leaf, computed in
    float32 and cast to the fine-tuned dtype; other leaves (integer counters) are the
    fine-tuned model's. The result is placed where the fine-tuned arrays are.

    Args:
        zeroshot, finetuned: variables `{'params': ..., 'batch_stats': ...}` with the same
            paths and shapes (numpy or jax arrays).
    """
    check_compatible(zeroshot, finetuned)
    flat_zero, flat_fine = _flat(zeroshot), _flat(finetuned)

    def mix(zero, fine):
        if not jnp.issubdtype(fine.dtype, jnp.floating):
            return fine
        if isinstance(fine, jax.Array):
            zero = jax.device_put(zero, fine.sharding)
        mixed = (1.0 - alpha) * jnp.asarray(zero, jnp.float32) + alpha * jnp.asarray(
            fine, jnp.float32
        )
        return mixed.astype(fine.dtype)

    return traverse_util.unflatten_dict({p: mix(flat_zero[p], f) for p, f in flat_fine.items()})


def evaluate_interpolations(
    evaluate: Callable[[Any], dict[str, float]],
    zeroshot: Any,
    finetuned: Any,
    alphas: tuple[float, ...],
) -> dict[str, float]:
    """Metrics of each interpolation, keyed `wise{alpha}/{metric}` (`wise0.5/zeroshot/top1`)."""
    metrics = {}
    for alpha in alphas:
        for key, value in evaluate(interpolate(zeroshot, finetuned, alpha)).items():
            metrics[f"wise{alpha}/{key}"] = value
    return metrics
