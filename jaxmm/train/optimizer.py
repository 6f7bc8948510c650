"""Optimizers with linear warmup and cosine decay: AdamW (CLIP paper section 2.5, ViT/Swin
recipes) or SGD with momentum (the ResNet/VGG/AlexNet recipes), picked by `optim.name`.

`optim.frozen` lists parameter-path prefixes that the optimizer leaves untouched (their
updates are zero, so weight decay does not shrink them either): `("image_tower",)` is
locked-image tuning (LiT, Zhai et al. 2022) with a converted image tower, and freezing
everything but a classifier's head gives a fine-tuned linear probe.

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


def frozen_labels(params, prefixes: tuple[str, ...]) -> dict:
    """`'frozen'` for the leaves under one of `prefixes` ('/'-joined module paths such as
    `'image_tower'` or `'encoder/block_0'`), `'trained'` for the rest."""

    def label(path, _):
        name = "/".join(str(getattr(key, "key", key)) for key in path)
        under = any(name == p or name.startswith(p.rstrip("/") + "/") for p in prefixes)
        return "frozen" if under else "trained"

    return jax.tree_util.tree_map_with_path(label, nn.unbox(params))


def make_optimizer(config: ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping (when `grad_clip_norm` > 0), then the optimizer with the masked
    weight decay and the schedule."""
    schedule = learning_rate_schedule(config, total_steps)
    name = config.get("name", "adamw")
    if name == "adamw":
        optimizer = optax.adamw(
            schedule,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=weight_decay_mask,
        )
    elif name == "sgd":
        # Coupled L2 decay added to the gradient before momentum, as torch.optim.SGD does.
        optimizer = optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask),
            optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
        )
    else:
        raise ValueError(f"unknown optimizer optim.name={name!r}; choose 'adamw' or 'sgd'")
    if config.grad_clip_norm:
        optimizer = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), optimizer)
    frozen = tuple(config.get("frozen", ()))
    if frozen:
        optimizer = optax.multi_transform(
            {"trained": optimizer, "frozen": optax.set_to_zero()},
            lambda params: frozen_labels(params, frozen),
        )
    return optimizer
