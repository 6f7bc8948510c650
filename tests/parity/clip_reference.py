"""Helpers shared by the CLIP parity tests (ViT and ResNet towers) against open_clip's `CLIP`.

Errors are relative, max|jax - torch| / max|torch| in float64 (`relative_error`). Imported only
after the test module has checked that torch and open_clip are installed.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, NamedTuple

import jax
import numpy as np
import open_clip
import torch

from jaxmm.convert import from_torch, to_torch
from jaxmm.losses import clip_infonce_loss
from jaxmm.models import create_model
from tests.parity.reference import randomise_, relative_error

_MODEL_CONFIGS = pathlib.Path(open_clip.__file__).parent / "model_configs"


def open_clip_config(name: str) -> dict[str, Any]:
    """The JSON config open_clip ships for `name` (e.g. `'ViT-L-14-quickgelu'`)."""
    return json.loads((_MODEL_CONFIGS / f"{name}.json").read_text())


# jaxmm's CLIP variants -> open_clip's config names. OpenAI's weights run with QuickGELU: the
# `-quickgelu` configs (open_clip's plain `RN50`, `ViT-B-32`, ... use nn.GELU).
OPEN_CLIP_NAMES = {
    "clip_vit_b32": "ViT-B-32-quickgelu",
    "clip_vit_b16": "ViT-B-16-quickgelu",
    "clip_vit_l14": "ViT-L-14-quickgelu",
    "clip_rn50": "RN50-quickgelu",
    "clip_rn101": "RN101-quickgelu",
}


def reduced_open_clip(
    name: str, vision_layers: int | list[int] | None = None, text_layers: int | None = None
) -> torch.nn.Module:
    """open_clip's `CLIP` from the JSON config of jaxmm's `name`, `randomise_`d, with the
    `layers` of the vision and text configs replaced where given (None keeps the real one)."""
    config = open_clip_config(OPEN_CLIP_NAMES[name])
    vision, text = dict(config["vision_cfg"]), dict(config["text_cfg"])
    vision["layers"] = vision["layers"] if vision_layers is None else vision_layers
    text["layers"] = text["layers"] if text_layers is None else text_layers
    torch.manual_seed(0)  # ModifiedResNet's init draws from the global generator
    model = open_clip.model.CLIP(
        config["embed_dim"], vision, text, quick_gelu=config.get("quick_gelu", False)
    )
    return randomise_(model)


def inputs(batch: int, size: int, context: int, vocab: int, seed: int = 0):
    """`[B, size, size, 3]` images and `[B, context]` int32 token ids: random words, then EOT
    (the largest id, `vocab - 1`, found by argmax as in CLIP), then zero padding."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, size, size, 3), np.float32)
    tokens = np.zeros((batch, context), np.int32)
    for row, length in enumerate(rng.integers(2, context + 1, batch)):
        tokens[row, : length - 1] = rng.integers(1, vocab - 1, length - 1)
        tokens[row, length - 1] = vocab - 1
    return images, tokens


def torch_outputs(model: torch.nn.Module, images: np.ndarray, tokens: np.ndarray):
    """open_clip's `[B, E]` unit image and text features and the exponentiated logit scale."""
    nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    return model(nchw, torch.from_numpy(tokens).long())


def assert_matches(name, reference, state_dict, images, tokens, **overrides) -> list[float]:
    """Converts `state_dict` (of `reference`, in eval mode) to the registry model `name` and
    asserts image embeddings, text embeddings and image->text logits within 1e-5.

    Returns:
        The three relative errors, in that order.
    """
    variables = from_torch(name, state_dict, **overrides)
    out = jax.jit(create_model(name, **overrides).apply)(variables, images, tokens)
    with torch.no_grad():
        # (image, text, exp(logit_scale)), plus logit_bias for SigLIP-style models.
        image_ref, text_ref, scale_ref, *bias_ref = (
            t.numpy() for t in torch_outputs(reference, images, tokens)
        )
    logits = np.exp(out.logit_scale) * out.image_embeddings @ out.text_embeddings.T
    logits_ref = scale_ref * image_ref @ text_ref.T
    if out.logit_bias is not None:
        logits, logits_ref = logits + out.logit_bias, logits_ref + bias_ref[0]
    errors = [
        relative_error(out.image_embeddings, image_ref),
        relative_error(out.text_embeddings, text_ref),
        relative_error(logits, logits_ref),
    ]
    assert max(errors) <= 1e-5, errors
    return errors


class StepErrors(NamedTuple):
    """Relative errors of one training step, keyed by open_clip state-dict key."""

    loss: float
    # Every parameter's gradient; those in `zero_grads` by size against the largest gradient.
    grads: dict[str, float]
    running_stats: dict[str, float]  # every BatchNorm running mean/var after the step (if any)


def training_step_errors(
    name, reference, images, tokens, zero_grads: tuple[str, ...] = (), **overrides
) -> StepErrors:
    """One InfoNCE step of the registry model `name` against open_clip's `reference` and
    `ClipLoss`, both in train mode (BatchNorm normalises with batch statistics and updates its
    running statistics) from the same weights.

    `zero_grads` names parameters whose gradient is zero in exact arithmetic, so both sides hold
    only rounding noise and a relative error means nothing: their error is the larger of the
    two sides' max |gradient| over the largest |gradient| of the whole torch model.
    `reference` is left in train mode with its gradients and updated statistics.
    """
    # Converted before torch's forward pass, which updates the running statistics in place.
    variables = from_torch(name, reference.state_dict(), **overrides)
    model = create_model(name, **overrides)

    def loss_fn(params):
        out, updates = model.apply(
            {**variables, "params": params}, images, tokens, train=True, mutable=["batch_stats"]
        )
        loss = clip_infonce_loss(out.image_embeddings, out.text_embeddings, out.logit_scale)
        return loss, updates

    (loss, updates), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
    reference.train()
    loss_ref = open_clip.loss.ClipLoss()(*torch_outputs(reference, images, tokens))
    loss_ref.backward()

    # Gradients sit where the parameters do, so `to_torch` names them; the updated running
    # statistics come along in `batch_stats`.
    converted = to_torch(name, {**variables, **updates, "params": grads}, **overrides)
    state = reference.state_dict()
    assert set(converted) == set(state), sorted(set(converted) ^ set(state))
    named = dict(reference.named_parameters())
    stats = {key: state[key] for key in state if key.endswith(("running_mean", "running_var"))}
    largest = max(float(param.grad.abs().max()) for param in named.values())

    def grad_error(key: str, grad: torch.Tensor) -> float:
        if key in zero_grads:
            return max(float(np.abs(converted[key]).max()), float(grad.abs().max())) / largest
        return relative_error(converted[key], grad)

    return StepErrors(
        loss=relative_error(loss, loss_ref.item()),
        grads={key: grad_error(key, param.grad) for key, param in named.items()},
        running_stats={key: relative_error(converted[key], value) for key, value in stats.items()},
    )


def worst(errors: dict[str, float]) -> tuple[str, float]:
    """The key with the largest error, for assertion messages."""
    return max(errors.items(), key=lambda item: item[1])
