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
    # The model's other variable collections, updated by the forward pass rather than the
    # optimizer: `{'batch_stats': ...}` for BatchNorm models, `{}` for the rest.
    model_state: dict[str, Any]
    opt_state: optax.OptState
    rng: jax.Array  # [2] uint32, a raw PRNG key (orbax saves it as a plain array)

    @property
    def variables(self) -> dict[str, Any]:
        """Everything `model.apply` needs: params and the other collections."""
        return {"params": self.params, **self.model_state}


def create_train_state(
    init_variables: Callable[[jax.Array], Any],
    tx: optax.GradientTransformation,
    mesh: Mesh,
    seed: int,
    rules=sharding.DEFAULT_RULES,
) -> tuple[TrainState, Any]:
    """Initialises a sharded `TrainState`; returns it with its tree of `NamedSharding`s.

    Args:
        init_variables: `rng -> variables` (`model.init`), `{'params': ...}` plus any other
            collections; values may carry logical-axis metadata (`nn.with_logical_partitioning`)
            and the state holds them unboxed. Values without it (BatchNorm statistics) are
            replicated.
    """

    def init(rng: jax.Array) -> TrainState:
        init_rng, state_rng = jax.random.split(rng)
        variables = dict(init_variables(init_rng))
        params = variables.pop("params")
        # Optimizer moments are built from the boxed params so they inherit the
        # parameters' logical axes (and so their shardings).
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=variables,
            opt_state=tx.init(params),
            rng=state_rng,
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
