"""Multi-process runs through JAX's own distributed runtime.

Every process runs the same program. `initialize` joins the run before anything
touches a device; afterwards `jax.devices()` lists the devices of all processes,
the mesh spans them, and one `jax.jit` over globally sharded arrays computes the
loss on the global batch, with XLA's collectives between hosts (NCCL on GPUs, ICI
on TPUs, gloo between CPU processes).

Work that must happen once per run (generating a dataset, training a tokenizer,
writing a file that all processes then read) goes through `first_process_then_others`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

T = TypeVar("T")


def initialize(config: ConfigDict) -> None:
    """Joins the multi-process run described by the config's `distributed` section.

    With `enabled` false nothing happens (a single-process run). Otherwise empty fields
    (`coordinator_address=""`, `num_processes=0`, `process_id=-1`) are left to JAX's
    cluster detection: Cloud TPU, SLURM, Open MPI and Kubernetes/GKE set them, as do the
    variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    """
    if not config.enabled or jax.distributed.is_initialized():
        return
    # CPU processes need a collectives library to talk to each other; the setting
    # is ignored by GPU and TPU backends.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address or None,
        num_processes=config.num_processes if config.num_processes > 0 else None,
        process_id=config.process_id if config.process_id >= 0 else None,
    )


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (a no-op in a single process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def first_process_then_others(name: str, fn: Callable[[], T]) -> T:
    """Calls `fn` on process 0, then, once it has returned there, on every other process.

    For work whose result process 0 leaves on shared storage (a generated dataset, a saved
    tokenizer): the others then find it instead of racing to write it.
    """
    if jax.process_index() == 0:
        result = fn()
    barrier(name)
    if jax.process_index() != 0:
        result = fn()
    return result
