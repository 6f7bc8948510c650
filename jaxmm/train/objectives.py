"""What a training step optimises: the model inputs a batch provides and the loss on the outputs.

The jitted step (`steps.make_train_step`) is the same for every task; an objective supplies
the three task-specific pieces, all pure functions of arrays:
- `inputs(batch)`: the positional arguments of `model.apply`;
- `loss(outputs, batch)`: the scalar loss and the metrics to log;
- `constrain(params)`: a projection applied after each optimizer update (CLIP's temperature
  clamp); the identity elsewhere.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from jaxmm import losses
from jaxmm.models.clip import CLIPOutput

Batch = dict[str, jax.Array]

# CLIP clamps the learned temperature so that logits are scaled by at most 100.
MAX_LOGIT_SCALE = math.log(100.0)


class Objective(Protocol):
    def inputs(self, batch: Batch) -> tuple[jax.Array, ...]: ...

    def loss(self, outputs: Any, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]: ...

    def constrain(self, params: Any) -> Any: ...


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


class Contrastive:
    """CLIP (InfoNCE) or SigLIP on `{'image', 'tokens'}` batches."""

    def __init__(self, loss_name: str):
        if loss_name not in ("infonce", "siglip"):
            raise ValueError(f"unknown loss {loss_name!r}; choose 'infonce' or 'siglip'")
        self.loss_name = loss_name

    def inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
        return batch["image"], batch["tokens"]

    def loss(self, outputs: CLIPOutput, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        i2t, t2i = losses.clip_accuracy(outputs.image_embeddings, outputs.text_embeddings)
        return contrastive_loss(self.loss_name, outputs), {
            "i2t_accuracy": i2t,
            "t2i_accuracy": t2i,
        }

    def constrain(self, params: Any) -> Any:
        return {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, MAX_LOGIT_SCALE)}


class Classification:
    """Softmax cross-entropy with label smoothing on `{'image', 'label'}` batches."""

    def __init__(self, label_smoothing: float = 0.0):
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
        return (batch["image"],)

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        loss = losses.softmax_cross_entropy(outputs, batch["label"], self.label_smoothing)
        accuracy = jnp.mean(jnp.argmax(outputs, axis=-1) == batch["label"])
        return loss, {"accuracy": accuracy}

    def constrain(self, params: Any) -> Any:
        return params
