"""AdamW with linear warmup and cosine decay, as in the CLIP paper (section 2.5).

Weight decay applies to weight matrices and convolution kernels only: never to
biases, norm parameters, embeddings (token, positional, class token) or the
temperature, all of which have no `kernel` in their name.
"""

from __future__ import annotations

import jax
import optax
from flax import linen as nn
from ml_collections import ConfigDict


def learning_rate_schedule(config: ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `config.learning_rate`, then cosine decay to `end_factor`."""
    warmup = min(config.warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=config.learning_rate * config.end_factor,
    )


def weight_decay_mask(params) -> dict:
    """True for the leaves named `kernel`; accepts boxed (logically partitioned) params."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", nn.unbox(params)
    )


def make_optimizer(config: ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with the masked weight decay and the schedule."""
    schedule = learning_rate_schedule(config, total_steps)
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm),
        optax.adamw(
            schedule,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=weight_decay_mask,
        ),
    )
