"""The training state and its sharded creation.

State is built the way large-scale JAX trainers do it: trace the initialiser
with `jax.eval_shape` (no memory used), read each parameter's logical axis
names, map them onto the mesh, then run the initialiser under `jax.jit` with
those output shardings so every array is born on the devices that own it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh

from jaxmm import sharding


@struct.dataclass
class TrainState:
    step: jax.Array  # [] int32
    params: Any
    opt_state: optax.OptState
    rng: jax.Array  # [2] uint32, a raw PRNG key (orbax saves it as a plain array)


def create_train_state(
    init_params: Callable[[jax.Array], Any],
    tx: optax.GradientTransformation,
    mesh: Mesh,
    seed: int,
    rules=sharding.DEFAULT_RULES,
) -> tuple[TrainState, Any]:
    """Initialises a sharded `TrainState`; returns it with its tree of `NamedSharding`s.

    Args:
        init_params: `rng -> params`, where params may carry logical-axis metadata
            (`nn.with_logical_partitioning`); the state holds them unboxed.
    """

    def init(rng: jax.Array) -> TrainState:
        init_rng, state_rng = jax.random.split(rng)
        params = init_params(init_rng)
        # Optimizer moments are built from the boxed params so they inherit the
        # parameters' logical axes (and so their shardings).
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=state_rng
        )

    rng = jax.random.PRNGKey(seed)
    abstract = jax.eval_shape(init, rng)
    shardings = sharding.logical_sharding(abstract, mesh, rules)
    state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
    return state, shardings


def abstract_state(state_shardings: Any, state: TrainState) -> Any:
    """`ShapeDtypeStruct`s with shardings: the restore target for a checkpoint."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_shardings
    )
