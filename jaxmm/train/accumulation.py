"""Gradient accumulation: one optimizer step over the global batch in `k` micro-batches.

`config.batch_size` stays the global batch; `config.grad_accum_steps = k` only changes how
much of it is in flight at once. Two methods, picked by the objective:

- Micro-batch gradients, for objectives whose loss is a weighted mean over the batch
  (classification, VQA, captioning: they say over what with `loss_weight(batch)`, the
  example or token count): each micro-batch's forward and backward pass runs in turn and
  the gradients are summed with the micro-batch's share of the weight, so the result is the
  one-big-batch loss and gradient (float32 round-off aside).
- Cached outputs (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under
  Memory Limited Setup", GradCache), for objectives without `loss_weight`: contrastive
  losses, where every example is a negative of every other, so micro-batch losses would see
  N/k negatives. Every micro-batch is first run forward without keeping activations; the
  loss and its gradient with respect to the model outputs are taken on all N outputs at
  once; then each micro-batch is run again, forward and backward, with its slice of the
  output gradient as the cotangent. The loss and parameter gradients are those of the
  unaccumulated step, for one forward pass more per micro-batch.

Micro-batch `j` holds examples `j, j + k, j + 2k, ...` of the batch: with the batch split
into contiguous blocks over the devices, every micro-batch then spans all devices equally.

Model state (BatchNorm running statistics) is threaded through the micro-batches in order:
it is updated `k` times a step, each time with one micro-batch's statistics, and BatchNorm
normalises each micro-batch with its own statistics (as PyTorch does under accumulation),
so a BatchNorm model's step equals the unaccumulated one only up to those statistics.
Dropout draws a different key for each micro-batch (the same key in both passes of the
cached method, which exactness needs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Batch = dict[str, jax.Array]
# `(params, model_state, batch, dropout_rng) -> (outputs, updated model_state)`: the model's
# training-mode forward pass on a (micro-)batch.
Forward = Callable[[Any, dict[str, Any], Batch, jax.Array], tuple[Any, dict[str, Any]]]


def split_micro_batches(batch: Batch, k: int) -> Batch:
    """`[B, ...]` -> `[k, B // k, ...]`, micro-batch `j` being examples `j, j + k, ...`."""

    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % k:
            raise ValueError(f"a batch of {x.shape[0]} does not split into {k} micro-batches")
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def merge_micro_outputs(outputs: Any) -> Any:
    """The inverse of `split_micro_batches` on stacked model outputs: `[k, b, ...]` leaves
    back to `[k * b, ...]` in batch order; per-micro-batch scalars (`[k]`, e.g. CLIP's
    temperature, the same parameter read k times) become the first one's."""

    def merge(x: jax.Array) -> jax.Array:
        if x.ndim == 1:
            return x[0]
        return jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])

    return jax.tree.map(merge, outputs)


def accumulated_loss_and_grads(
    forward: Forward,
    objective: Any,
    params: Any,
    model_state: dict[str, Any],
    batch: Batch,
    dropout_rng: jax.Array,
    k: int,
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any], Any]:
    """`(loss, metrics, model_state, grads)` of the global `batch` in `k` micro-batches, by
    the method the objective allows (see the module docstring)."""
    micro = split_micro_batches(batch, k)
    rngs = jax.vmap(lambda j: jax.random.fold_in(dropout_rng, j))(jnp.arange(k))
    if hasattr(objective, "loss_weight"):
        return _weighted_micro_batches(forward, objective, params, model_state, micro, rngs)
    return _cached_outputs(forward, objective, params, model_state, batch, micro, rngs)


def _weighted_micro_batches(forward, objective, params, model_state, micro, rngs):
    weights = jax.vmap(objective.loss_weight)(micro)  # [k]
    shares = weights / jnp.maximum(weights.sum(), 1e-12)

    def micro_step(carry, xs):
        grads, state = carry
        micro_batch, rng, share = xs

        def weighted_loss(p):
            outputs, new_state = forward(p, state, micro_batch, rng)
            loss, metrics = objective.loss(outputs, micro_batch)
            return share * loss, (loss, metrics, new_state)

        (_, (loss, metrics, state)), micro_grads = jax.value_and_grad(weighted_loss, has_aux=True)(
            params
        )
        grads = jax.tree.map(jnp.add, grads, micro_grads)
        return (grads, state), (loss, metrics)

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, model_state), (losses, metrics) = jax.lax.scan(
        micro_step, (zeros, model_state), (micro, rngs, shares)
    )
    # Metrics are averaged with the loss's weights (per-example or per-token means).
    average = lambda x: jnp.tensordot(shares, x.astype(jnp.float32), axes=1)  # noqa: E731
    return average(losses), jax.tree.map(average, metrics), model_state, grads


def _cached_outputs(forward, objective, params, model_state, batch, micro, rngs):
    # Pass 1: every micro-batch's outputs; nothing is differentiated, so no activations kept.
    def outputs_of(xs):
        micro_batch, rng = xs
        outputs, _ = forward(params, model_state, micro_batch, rng)
        return outputs

    stacked = jax.lax.map(outputs_of, (micro, rngs))

    # The loss on all N outputs and its gradient with respect to each of them.
    def loss_of_outputs(stacked_outputs):
        return objective.loss(merge_micro_outputs(stacked_outputs), batch)

    (loss, metrics), output_grads = jax.value_and_grad(loss_of_outputs, has_aux=True)(stacked)

    # Pass 2: each micro-batch again, its output gradient pulled back to the parameters.
    def micro_step(carry, xs):
        grads, state = carry
        micro_batch, rng, cotangent = xs
        _, pull_back, new_state = jax.vjp(
            lambda p: forward(p, state, micro_batch, rng), params, has_aux=True
        )
        (micro_grads,) = pull_back(cotangent)
        return (jax.tree.map(jnp.add, grads, micro_grads), new_state), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, model_state), _ = jax.lax.scan(
        micro_step, (zeros, model_state), (micro, rngs, output_grads)
    )
    return loss, metrics, model_state, grads
