"""What a training step optimises: the model inputs a batch provides and the loss on the outputs.

The jitted step (`steps.make_train_step`) is the same for every task; an objective supplies
the three task-specific pieces, all pure functions of arrays:
- `inputs(batch)`: the positional arguments of `model.apply`;
- `loss(outputs, batch)`: the scalar loss and the metrics to log;
- `constrain(params)`: a projection applied after each optimizer update (CLIP's temperature
  clamp); the identity elsewhere;
- optionally `loss_weight(batch)`: the count the loss is a mean over (examples, tokens), which
  lets gradient accumulation weigh micro-batches exactly (`jaxmm.train.accumulation`);
  objectives without it (contrastive ones) accumulate through cached outputs.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax

from jaxmm import losses, ring_losses
from jaxmm.models.clip import CLIPOutput
from jaxmm.train import classification_losses

Batch = dict[str, jax.Array]

# CLIP clamps the learned temperature so that logits are scaled by at most 100.
MAX_LOGIT_SCALE = math.log(100.0)


class Objective(Protocol):
    def inputs(self, batch: Batch) -> tuple[jax.Array, ...]: ...

    def loss(self, outputs: Any, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]: ...

    def constrain(self, params: Any) -> Any: ...


def contrastive_loss(
    name: str, output: CLIPOutput, blocks: ring_losses.Blocks | None = None
) -> jax.Array:
    """The configured contrastive objective on one forward pass.

    `blocks=None` computes it on the global `[N, N]` logits (`jaxmm.losses`); otherwise
    block by block (`jaxmm.ring_losses`), with the same value and gradients.
    """
    embeddings = (output.image_embeddings, output.text_embeddings, output.logit_scale)
    if name == "infonce":
        if blocks is None:
            return losses.clip_infonce_loss(*embeddings)
        return ring_losses.infonce_loss(*embeddings, blocks)
    if name == "siglip":
        if output.logit_bias is None:
            raise ValueError("the siglip loss needs a model built with init_logit_bias")
        if blocks is None:
            return losses.siglip_loss(*embeddings, output.logit_bias)
        return ring_losses.siglip_loss(*embeddings, output.logit_bias, blocks)
    raise ValueError(f"unknown loss {name!r}; choose 'infonce' or 'siglip'")


def loss_blocks(loss_impl: str, chunk_size: int) -> ring_losses.Blocks | None:
    """How `config.loss_impl` splits the contrastive loss: None is the global `[N, N]` matrix."""
    impls = {
        "global": None,
        "chunked": ring_losses.Chunks(chunk_size),
        # The mesh is the one the train step runs under (`jax.set_mesh`); each device goes
        # through its [n, n] block of a step in chunks, so memory is linear in n.
        "ring": ring_losses.DeviceRing(inner=ring_losses.Chunks(chunk_size)),
    }
    if loss_impl not in impls:
        raise ValueError(f"unknown loss_impl {loss_impl!r}; choose from {sorted(impls)}")
    return impls[loss_impl]


class Contrastive:
    """CLIP (InfoNCE) or SigLIP on `{'image', 'tokens'}` batches."""

    def __init__(self, loss_name: str, loss_impl: str = "global", chunk_size: int = 256):
        if loss_name not in ("infonce", "siglip"):
            raise ValueError(f"unknown loss {loss_name!r}; choose 'infonce' or 'siglip'")
        self.loss_name = loss_name
        self.blocks = loss_blocks(loss_impl, chunk_size)

    def inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
        return batch["image"], batch["tokens"]

    def loss(self, outputs: CLIPOutput, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        embeddings = (outputs.image_embeddings, outputs.text_embeddings)
        if self.blocks is None:
            i2t, t2i = losses.clip_accuracy(*embeddings)
        else:  # the global accuracy would build the [N, N] matrix the blocks avoid
            i2t, t2i = ring_losses.clip_accuracy(*embeddings, self.blocks)
        return contrastive_loss(self.loss_name, outputs, self.blocks), {
            "i2t_accuracy": i2t,
            "t2i_accuracy": t2i,
        }

    def constrain(self, params: Any) -> Any:
        return {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, MAX_LOGIT_SCALE)}


class Classification:
    """Softmax cross-entropy with label smoothing on `{'image', 'label'}` batches, or another
    per-example loss (`example_loss`: focal, class-balanced, logit-adjusted, built by
    `classification_losses.make_example_loss`); the model reads the batch's `input_keys`
    (`('image', 'tokens')` for image + text classifiers)."""

    def __init__(
        self,
        label_smoothing: float = 0.0,
        input_keys: tuple[str, ...] = ("image",),
        example_loss: classification_losses.ExampleLoss | None = None,
    ):
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.input_keys = input_keys
        self.example_loss = example_loss or classification_losses.make_example_loss(
            None, label_smoothing
        )

    def inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
        return tuple(batch[key] for key in self.input_keys)

    def example_losses(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        """`[B]` float32 loss of each example of `logits` `[B, C]` against int `labels` `[B]`.

        `loss` is their mean; a mixed batch (MixUp/CutMix) weighs two calls of it, one per
        label of each example.
        """
        return self.example_loss(logits, labels)

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        per_example = self.example_losses(outputs, batch["label"])
        if "mix_lambda" in batch:  # MixUp/CutMix (jaxmm/data/batch_augment.py): two labels each
            lam = batch["mix_lambda"]
            per_example = lam * per_example + (1 - lam) * self.example_losses(
                outputs, batch["mix_label"]
            )
        loss = jnp.mean(per_example)
        # On a mixed batch this counts the example's own label (the larger share or not).
        accuracy = jnp.mean(jnp.argmax(outputs, axis=-1) == batch["label"])
        return loss, {"accuracy": accuracy}

    def loss_weight(self, batch: Batch) -> jax.Array:
        """What `loss` averages over: the examples (gradient accumulation)."""
        return jnp.float32(batch["label"].shape[0])

    def constrain(self, params: Any) -> Any:
        return params


class SoftTargetClassification:
    """Answer classification against soft targets, on `{'image', 'tokens', 'targets'}` batches.

    `targets` `[B, V]` (or `[B, Q, V]` for Q questions per image, `tokens` `[B, Q, L]`)
    holds each vocabulary answer's score (VQA-v2's soft accuracy against
    the human answers, or a one-hot answer). The loss is the softmax cross-entropy with the
    targets normalised to a distribution: exact for one answer per question (the built-in
    data); for VQA-v2's ten human answers Teney et al. (2018) report a sigmoid per answer
    a little better. A question whose answers all lie outside the vocabulary has no target
    and no weight (the padding questions of an image with fewer than Q). `accuracy` is the soft
    accuracy of the top answer, the VQA metric itself, over the batch's questions (padding,
    all-zero tokens, left out).
    """

    def inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
        return batch["image"], batch["tokens"]

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        targets = batch["targets"].astype(jnp.float32)  # [B, V] or [B, Q, V]
        total = targets.sum(axis=-1)  # [B] or [B, Q]
        distribution = targets / jnp.maximum(total, 1e-12)[..., None]
        per_example = -(distribution * jax.nn.log_softmax(outputs.astype(jnp.float32))).sum(-1)
        answerable = (total > 0).astype(jnp.float32)
        loss = (per_example * answerable).sum() / jnp.maximum(answerable.sum(), 1.0)
        # Accuracy over the real questions (an unanswerable one scores 0), not the padding.
        tokens = batch.get("tokens")
        asked = jnp.ones_like(total) if tokens is None else (tokens != 0).any(-1)
        asked = asked.astype(jnp.float32)
        top = jnp.argmax(outputs, axis=-1)[..., None]
        score = jnp.take_along_axis(targets, top, axis=-1)[..., 0]
        accuracy = (score * asked).sum() / jnp.maximum(asked.sum(), 1.0)
        return loss, {"accuracy": accuracy}

    def loss_weight(self, batch: Batch) -> jax.Array:
        """What `loss` averages over: the answerable questions (gradient accumulation)."""
        return (batch["targets"].sum(axis=-1) > 0).sum().astype(jnp.float32)

    def constrain(self, params: Any) -> Any:
        return params


class Captioning:
    """Next-token cross-entropy with label smoothing on `{'image', 'tokens', 'targets'}`
    batches: `tokens` `[B, L]` are the caption's inputs (SOT first), `targets` `[B, L]` the same
    caption one token later; padding targets (id 0) carry no loss. `token_accuracy` is the
    fraction of non-padding targets the logits rank first (teacher forcing)."""

    def __init__(self, label_smoothing: float = 0.0):
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
        return batch["image"], batch["tokens"]

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        targets = batch["targets"]
        logits = outputs.astype(jnp.float32)  # [B, L, V]
        labels = jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float32)
        if self.label_smoothing:
            labels = optax.smooth_labels(labels, self.label_smoothing)
        per_token = optax.softmax_cross_entropy(logits, labels)  # [B, L]
        weights = (targets != 0).astype(jnp.float32)
        count = jnp.maximum(weights.sum(), 1.0)
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
        return (per_token * weights).sum() / count, {
            "token_accuracy": (correct * weights).sum() / count
        }

    def loss_weight(self, batch: Batch) -> jax.Array:
        """What `loss` averages over: the non-padding target tokens (gradient accumulation)."""
        return (batch["targets"] != 0).sum().astype(jnp.float32)

    def constrain(self, params: Any) -> Any:
        return params
