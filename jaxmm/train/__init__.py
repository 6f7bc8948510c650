"""Training: state, optimizer, jitted steps, checkpoints, metrics and the loop.

`run` is imported on first use, not here: the loop needs ml_collections, tfds and grain,
while the step, state and objectives (`jaxmm.train.steps`, `.state`, `.objectives`) must
import on a bare accelerator host that has only jax, flax, optax, orbax and chex
(`benchmarks/train_step.py`, `tests/test_portability.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jaxmm.train.loop import run

__all__ = ["run"]


def __getattr__(name: str):
    if name == "run":
        from jaxmm.train.loop import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
