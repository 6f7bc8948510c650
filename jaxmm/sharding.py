"""Device meshes and the logical-axis rules that map model dimensions onto them.

Parameters and activations are annotated with *logical* axis names
(`nn.with_logical_partitioning`, `nn.with_logical_constraint`); the rules here
translate those names into the physical mesh axes `data`, `fsdp` and `model`.
The default is pure data parallelism: only the batch is split. Setting the
`fsdp` axis shards parameters and optimizer state along `embed`; the `model`
axis splits attention heads and MLP hidden units (tensor parallelism).

This module imports nothing else from jaxmm so that every layer can use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "model")

# Logical name -> mesh axis (or axes). Names starting with `act_` are activations;
# they are kept apart from the parameter names so that, say, the activation's
# embedding dimension stays whole while FSDP splits the parameters' one.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("layers", None),  # the stacked axis of scanned layers (jaxmm.models.layers.Encoder)
    ("qkv", None),
    ("vocab", None),
    ("length", None),
    ("patch_h", None),
    ("patch_w", None),
    ("channels", None),
    ("act_length", None),
    ("act_embed", None),
    ("act_mlp", "model"),
    ("act_heads", "model"),
)


def logical_rules(overrides=()) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """`DEFAULT_RULES` with some logical names mapped elsewhere (the config's `mesh_rules`).

    Args:
        overrides: `(logical_name, mesh_axes)` pairs, e.g. `(("embed", None),)` to keep the
            parameters whole on the `fsdp` axis, or `(("heads", None), ("mlp", None))` to turn
            tensor parallelism off; `mesh_axes` is a mesh axis, a tuple of them, or None.

    Raises:
        ValueError: an unknown logical name or mesh axis, naming it.
    """
    rules = dict(DEFAULT_RULES)
    for name, axes in overrides:
        if name not in rules:
            raise ValueError(f"mesh_rules: unknown logical axis {name!r}; known: {sorted(rules)}")
        named = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        unknown = [axis for axis in named if axis not in MESH_AXES]
        if unknown:
            raise ValueError(
                f"mesh_rules: {name!r} maps to unknown mesh axes {unknown}; known: {MESH_AXES}"
            )
        rules[name] = axes if axes is None or isinstance(axes, str) else tuple(axes)
    return tuple(rules.items())


def mesh_shape_from_config(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Resolves a `{'data': -1, 'fsdp': 1, 'model': 1}` request against the device count.

    At most one axis may be -1, meaning "all remaining devices".

    Raises:
        ValueError: an unknown axis name, more than one -1, or a product that does not
            equal the number of devices.
    """
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; known: {MESH_AXES}")
    sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {free}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"mesh {dict(shape)} does not divide the {num_devices} available devices"
            )
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(
            f"mesh {sizes} needs {math.prod(sizes.values())} devices but "
            f"{num_devices} are available"
        )
    return sizes


def make_mesh(
    shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """Builds a (`data`, `fsdp`, `model`) mesh over `devices` (default: all devices).

    `jax.sharding.Mesh` is used rather than `jax.make_mesh`, whose default explicit
    axis types break optax losses on sharded logits.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape_from_config(shape or {"data": -1}, len(devices))
    grid = np.asarray(devices, dtype=object).reshape([sizes[axis] for axis in MESH_AXES])
    return Mesh(grid, MESH_AXES)


def logical_sharding(tree, mesh: Mesh, rules=DEFAULT_RULES):
    """`NamedSharding`s for a tree of (possibly abstract) logically partitioned values."""
    specs = nn.get_partition_spec(tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of arrays whose leading dimension is the global batch."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_array_from_host(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds whole (e.g. an eval batch).

    Each process fills only its own devices' shards; jit would refuse a plain numpy array
    with a sharding that spans other processes' devices.
    """
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
