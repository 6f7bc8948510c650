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
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import linen as nn
from jax.sharding import Mesh

from jaxmm import sharding
from jaxmm.train.accumulation import (
    accumulated_loss_and_grads,
    merge_micro_outputs,
    split_micro_batches,
)
from jaxmm.train.objectives import Objective
from jaxmm.train.state import TrainState


def inference_mode_where(locked: Callable[[tuple[str, ...]], bool]):
    """A context in which every module whose path `locked(path)` accepts is called with
    `train=False`, whatever its parent passes (and so are the modules it calls).

    A locked tower (`optim.frozen`) runs as LiT runs it, in inference mode: its parameters
    never change, so its BatchNorm normalises with, and keeps, the running statistics it was
    loaded with, and its dropout is off. The interception works for any model whose modules
    take `train` as a keyword, as jaxmm's do, with no per-model flag.
    """

    def interceptor(next_fun, args, kwargs, context):
        if kwargs.get("train") and locked(context.module.path):
            kwargs = {**kwargs, "train": False}
        return next_fun(*args, **kwargs)

    return nn.intercept_methods(interceptor)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    objective: Objective,
    schedule: optax.Schedule,
    locked: Callable[[tuple[str, ...]], bool] = lambda module_path: False,
    grad_accum_steps: int = 1,
    teacher: Callable[[Any, dict[str, jax.Array]], Any] | None = None,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """`(state, batch) -> (state, metrics)`; jit it with the state donated.

    The forward pass runs in train mode: dropout draws from a key derived from the state's
    RNG and step (so a resumed run draws the same masks), and the model's non-parameter
    collections (BatchNorm statistics) come back updated. Modules whose path `locked`
    accepts (`ParamGroups.is_locked`: all their parameters frozen) run in inference mode.
    With `grad_accum_steps > 1` the batch is processed in that many micro-batches
    (`jaxmm.train.accumulation`) for the same loss and update.
    `metrics["finite_leaves"]` (`finite_flags`) says whether the loss, gradients and updated
    parameters were all finite; when not, the step changed nothing but `state.step`.

    With a `teacher` (knowledge distillation, `jaxmm.train.distillation`) the step is
    `(state, batch, teacher_variables) -> (state, metrics)`: `teacher(teacher_variables,
    batch)` runs first (in micro-batches under accumulation, so its activations shrink with
    the micro-batch as the student's do) and the objective reads its outputs as
    `batch['teacher']`.
    """
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be at least 1, got {grad_accum_steps}")

    def forward(params, model_state, batch, dropout_rng):
        with inference_mode_where(locked):
            outputs, model_state = model.apply(
                {"params": params, **model_state},
                *objective.inputs(batch),
                train=True,
                rngs={"dropout": dropout_rng},
                mutable=list(model_state),
            )
        return outputs, dict(model_state)

    def loss_and_grads(params, model_state, batch, dropout_rng):
        if grad_accum_steps > 1:
            return accumulated_loss_and_grads(
                forward, objective, params, model_state, batch, dropout_rng, grad_accum_steps
            )

        def loss_fn(params):
            outputs, new_model_state = forward(params, model_state, batch, dropout_rng)
            loss, metrics = objective.loss(outputs, batch)
            return loss, (metrics, new_model_state)

        (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, metrics, model_state, grads

    def teacher_targets(teacher_variables, batch):
        if grad_accum_steps == 1:
            return teacher(teacher_variables, batch)
        micro = split_micro_batches(batch, grad_accum_steps)
        stacked = jax.lax.map(lambda micro_batch: teacher(teacher_variables, micro_batch), micro)
        return merge_micro_outputs(stacked)

    def train_step(state: TrainState, batch: dict[str, jax.Array], teacher_variables=None):
        if teacher is not None:
            batch = {**batch, "teacher": teacher_targets(teacher_variables, batch)}
        dropout_rng = jax.random.fold_in(state.rng, state.step)
        loss, metrics, model_state, grads = loss_and_grads(
            state.params, state.model_state, batch, dropout_rng
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
        # One NaN or inf would spread through the parameters, Adam's moments and BatchNorm's
        # statistics for good, so an update built on one is not applied; only the step
        # counter moves on, and the loop stops or skips (`check_finite`).
        metrics["finite_leaves"] = finite_flags(loss, grads, params)
        updated = state.replace(params=params, model_state=dict(model_state), opt_state=opt_state)
        all_finite = metrics["finite_leaves"].all()
        kept = jax.tree.map(lambda new, old: jnp.where(all_finite, new, old), updated, state)
        return kept.replace(step=state.step + 1), metrics

    return train_step


NONFINITE_POLICIES = ("stop", "skip")


def _leaf_names(prefix: str, tree: Any) -> list[str]:
    """`prefix/path/to/leaf` for each leaf of `tree`, in `jax.tree.leaves` order."""
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    return ["/".join([prefix, *(str(getattr(k, "key", k)) for k in path)]) for path in paths]


def finite_flags(loss: jax.Array, grads: Any, params: Any) -> jax.Array:
    """`[1 + 2 * leaves]` bool: whether the loss, each gradient leaf and each updated
    parameter leaf are all finite, named in order by `finite_flag_names(params)`."""
    leaves = [loss, *jax.tree.leaves(grads), *jax.tree.leaves(params)]
    return jnp.stack([jnp.isfinite(leaf).all() for leaf in leaves])


def finite_flag_names(params: Any) -> list[str]:
    return ["loss", *_leaf_names("gradient", params), *_leaf_names("params", params)]


def check_finite(finite_leaves: jax.Array, params: Any, step: int, policy: str) -> bool:
    """Applies `config.nonfinite` to a step's `finite_leaves`; True when the step was skipped.

    Under "stop" a step with a non-finite loss, gradient or updated parameter raises an error
    naming them; under "skip" it is logged and reported as skipped (the step did not apply
    its update either way). Names are worked out only when it happens.
    """
    finite_leaves = np.asarray(jax.device_get(finite_leaves))
    if finite_leaves.all():
        return False
    names = [n for n, ok in zip(finite_flag_names(params), finite_leaves, strict=True) if not ok]
    message = f"non-finite values at step {step} in " + ", ".join(names[:20])
    message += f" and {len(names) - 20} more" if len(names) > 20 else ""
    if policy == "stop":
        raise FloatingPointError(
            f"{message}. The update was not applied; the last checkpoint holds finite values. "
            "Lower the learning rate, check the data, or set config.nonfinite='skip'."
        )
    logging.warning("%s; the step's update is skipped", message)
    return True


def _jit_over_batch(fn: Callable[[Any, Any], jax.Array], mesh: Mesh) -> Callable[..., jax.Array]:
    """jit `fn(variables, batch)` with the batch (an array or a tuple of arrays) split over the
    mesh's batch axes and the output replicated, so every process (of a multi-host run too)
    can read it whole; every process passes the same whole host batch."""
    batch_sharding = sharding.batch_sharding(mesh)
    jitted = jax.jit(
        fn, in_shardings=(None, batch_sharding), out_shardings=sharding.replicated(mesh)
    )

    def call(variables: Any, batch: Any) -> jax.Array:
        to_global = lambda x: sharding.global_array_from_host(x, batch_sharding)  # noqa: E731
        return jitted(variables, jax.tree.map(to_global, batch))

    return call


def make_encoders(
    model: nn.Module, mesh: Mesh
) -> tuple[Callable[..., jax.Array], Callable[..., jax.Array]]:
    """Jitted `(variables, images) -> embeddings` and `(variables, tokens) -> embeddings`."""

    def encode_image(variables: Any, images: jax.Array) -> jax.Array:
        return model.apply(variables, images, method=model.encode_image)

    def encode_text(variables: Any, tokens: jax.Array) -> jax.Array:
        return model.apply(variables, tokens, method=model.encode_text)

    return _jit_over_batch(encode_image, mesh), _jit_over_batch(encode_text, mesh)


def make_predict(model: nn.Module, mesh: Mesh) -> Callable[..., jax.Array]:
    """Jitted `(variables, images) -> logits` in eval mode (BatchNorm running statistics);
    for models of several inputs, `(variables, (images, tokens)) -> logits`."""

    def predict(variables: Any, inputs: jax.Array | tuple[jax.Array, ...]) -> jax.Array:
        return model.apply(variables, *inputs if isinstance(inputs, tuple) else (inputs,))

    return _jit_over_batch(predict, mesh)
