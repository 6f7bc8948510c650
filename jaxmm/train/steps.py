"""The jitted CLIP training step and the embedding functions used by evaluation.

The contrastive loss sees the global batch: the step is one `jax.jit` over
arrays sharded across the mesh, so the `[N, N]` similarity matrix spans every
device's examples and XLA inserts the collectives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import Mesh

from jaxmm import losses, sharding
from jaxmm.models.clip import CLIPOutput
from jaxmm.train.state import TrainState

# CLIP clamps the learned temperature so that logits are scaled by at most 100.
MAX_LOGIT_SCALE = math.log(100.0)


def contrastive_loss(name: str, output: CLIPOutput) -> jax.Array:
    """The configured contrastive objective on one forward pass."""
    if name == "infonce":
        return losses.clip_infonce_loss(
            output.image_embeddings, output.text_embeddings, output.logit_scale
        )
    if name == "siglip":
        if output.logit_bias is None:
            raise ValueError("the siglip loss needs a model built with init_logit_bias")
        return losses.siglip_loss(
            output.image_embeddings,
            output.text_embeddings,
            output.logit_scale,
            output.logit_bias,
        )
    raise ValueError(f"unknown loss {name!r}; choose 'infonce' or 'siglip'")


def make_train_step(
    model: nn.Module, tx: optax.GradientTransformation, loss_name: str, schedule: optax.Schedule
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """`(state, batch) -> (state, metrics)`; jit it with the state donated."""

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        def loss_fn(params):
            output = model.apply({"params": params}, batch["image"], batch["tokens"], train=True)
            return contrastive_loss(loss_name, output), output

        (loss, output), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        params = {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, MAX_LOGIT_SCALE)}
        i2t, t2i = losses.clip_accuracy(output.image_embeddings, output.text_embeddings)
        metrics = {
            "loss": loss,
            "logit_scale": jnp.exp(params["logit_scale"]),
            "learning_rate": schedule(state.step),
            "grad_norm": optax.tree.norm(grads),
            "i2t_accuracy": i2t,
            "t2i_accuracy": t2i,
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def make_encoders(
    model: nn.Module, mesh: Mesh
) -> tuple[Callable[..., jax.Array], Callable[..., jax.Array]]:
    """Jitted `(params, images) -> embeddings` and `(params, tokens) -> embeddings`.

    Inputs are split over the mesh's batch axes; the embeddings come back replicated,
    so every process (of a multi-host run too) can read them whole.
    """

    def encode_image(params: Any, images: jax.Array) -> jax.Array:
        return model.apply({"params": params}, images, method=model.encode_image)

    def encode_text(params: Any, tokens: jax.Array) -> jax.Array:
        return model.apply({"params": params}, tokens, method=model.encode_text)

    shard_batch = dict(
        in_shardings=(None, sharding.batch_sharding(mesh)), out_shardings=sharding.replicated(mesh)
    )
    return jax.jit(encode_image, **shard_batch), jax.jit(encode_text, **shard_batch)
