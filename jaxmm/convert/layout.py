"""Layout transforms shared by every PyTorch source (timm, torchvision, ...).

A converter module maps each PyTorch state-dict key to a Flax variable path and a `Transform`.
The path's first element is the Flax collection: `'params'` for trained weights,
`'batch_stats'` for BatchNorm running statistics (PyTorch buffers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

Array = Any  # numpy array, or a jax tracer while shapes are worked out with `jax.eval_shape`
Shape = tuple[int, ...]
FlaxPath = tuple[str, ...]  # (collection, module, ..., variable)


class Transform(NamedTuple):
    """How one tensor changes layout between PyTorch and Flax.

    `to_flax(array, flax_shape)` takes the target shape so that split axes (heads) need no
    model config; `to_torch(array)` depends on its input alone, so expected PyTorch shapes can
    be derived from the Flax model with `jax.eval_shape`. Both only transpose and reshape, so a
    round trip is bit-exact.

    `torch_aliases` lists other PyTorch shapes that `to_flax` also reads, for tensors some
    checkpoints store in another layout (a scalar as `[1]`); `to_torch` writes the canonical one.
    """

    to_flax: Callable[[Array, Shape], Array]
    to_torch: Callable[[Array], Array]
    torch_aliases: tuple[Shape, ...] = ()


KeyMap = dict[str, tuple[FlaxPath, Transform]]

IDENTITY = Transform(lambda a, shape: a, lambda a: a)
# Linear weight [out, in] <-> Dense kernel [in, out].
LINEAR = Transform(lambda a, shape: a.T, lambda a: a.T)
# Conv2d weight OIHW <-> nn.Conv kernel HWIO.
CONV = Transform(lambda a, shape: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1))


def linear(torch_prefix: str, flax_path: tuple[str, ...], kernel: Transform = LINEAR) -> KeyMap:
    """`Linear`/`Dense` weight and bias; `flax_path` excludes the collection."""
    return {
        f"{torch_prefix}.weight": (("params", *flax_path, "kernel"), kernel),
        f"{torch_prefix}.bias": (("params", *flax_path, "bias"), IDENTITY),
    }


def layer_norm(torch_prefix: str, flax_path: tuple[str, ...]) -> KeyMap:
    """LayerNorm: torch `weight` is Flax's `scale`."""
    return {
        f"{torch_prefix}.weight": (("params", *flax_path, "scale"), IDENTITY),
        f"{torch_prefix}.bias": (("params", *flax_path, "bias"), IDENTITY),
    }


def batch_norm(torch_prefix: str, flax_path: tuple[str, ...]) -> KeyMap:
    """BatchNorm: affine weights in `params`, running statistics in `batch_stats`.

    torch's `num_batches_tracked` counter has no Flax counterpart: `from_torch` drops it and
    `to_torch` writes 0 so that strict loading works.
    """
    return {
        f"{torch_prefix}.weight": (("params", *flax_path, "scale"), IDENTITY),
        f"{torch_prefix}.bias": (("params", *flax_path, "bias"), IDENTITY),
        f"{torch_prefix}.running_mean": (("batch_stats", *flax_path, "mean"), IDENTITY),
        f"{torch_prefix}.running_var": (("batch_stats", *flax_path, "var"), IDENTITY),
    }
