"""The jitted training step, shared by every task, and the inference functions evaluation uses.

The loss sees the global batch: the step is one `jax.jit` over arrays sharded across the
mesh, so CLIP's `[N, N]` similarity matrix spans every device's examples and BatchNorm's
batch statistics are taken over the global batch (synchronised BatchNorm); XLA inserts the
collectives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax
from flax import linen as nn
from jax.sharding import Mesh

from jaxmm import sharding
from jaxmm.train.objectives import Objective
from jaxmm.train.state import TrainState


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    objective: Objective,
    schedule: optax.Schedule,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """`(state, batch) -> (state, metrics)`; jit it with the state donated.

    The forward pass runs in train mode: dropout draws from a key derived from the state's
    RNG and step (so a resumed run draws the same masks), and the model's non-parameter
    collections (BatchNorm statistics) come back updated.
    """

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        dropout_rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            outputs, model_state = model.apply(
                {"params": params, **state.model_state},
                *objective.inputs(batch),
                train=True,
                rngs={"dropout": dropout_rng},
                mutable=list(state.model_state),
            )
            loss, metrics = objective.loss(outputs, batch)
            return loss, (metrics, model_state)

        (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = objective.constrain(optax.apply_updates(state.params, updates))
        metrics = {
            "loss": loss,
            **metrics,
            "learning_rate": schedule(state.step),
            "grad_norm": optax.tree.norm(grads),
        }
        if "logit_scale" in params:
            metrics["logit_scale"] = jax.numpy.exp(params["logit_scale"])
        new_state = state.replace(
            step=state.step + 1, params=params, model_state=dict(model_state), opt_state=opt_state
        )
        return new_state, metrics

    return train_step


def _sharded_over_batch(mesh: Mesh) -> dict[str, Any]:
    """jit arguments: inputs split over the mesh's batch axes, outputs replicated, so every
    process (of a multi-host run too) can read them whole."""
    return dict(
        in_shardings=(None, sharding.batch_sharding(mesh)), out_shardings=sharding.replicated(mesh)
    )


def make_encoders(
    model: nn.Module, mesh: Mesh
) -> tuple[Callable[..., jax.Array], Callable[..., jax.Array]]:
    """Jitted `(variables, images) -> embeddings` and `(variables, tokens) -> embeddings`."""

    def encode_image(variables: Any, images: jax.Array) -> jax.Array:
        return model.apply(variables, images, method=model.encode_image)

    def encode_text(variables: Any, tokens: jax.Array) -> jax.Array:
        return model.apply(variables, tokens, method=model.encode_text)

    return (
        jax.jit(encode_image, **_sharded_over_batch(mesh)),
        jax.jit(encode_text, **_sharded_over_batch(mesh)),
    )


def make_predict(model: nn.Module, mesh: Mesh) -> Callable[..., jax.Array]:
    """Jitted `(variables, images) -> logits` in eval mode (BatchNorm running statistics)."""

    def predict(variables: Any, images: jax.Array) -> jax.Array:
        return model.apply(variables, images)

    return jax.jit(predict, **_sharded_over_batch(mesh))
