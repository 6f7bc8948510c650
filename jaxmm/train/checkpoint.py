"""Orbax checkpoints of the training state and the input pipeline's position.

A checkpoint is one orbax `Composite` with two items: `state` (step, params,
optimizer state, RNG; restored straight onto the current mesh's shardings, whatever
mesh or device count wrote it) and `data` (the grain iterator's state as JSON, taken
at the moment of the save, so later batches cannot leak into it).

Crash consistency: orbax writes a checkpoint into `STEP.orbax-checkpoint-tmp` and
renames it to `STEP` only once every file is on disk, and lists only renamed
directories, so a process killed mid-save (SIGKILL, out of memory) leaves the previous
checkpoint as the newest; the torn temporary directory is deleted before the next
save.

Saves are asynchronous, so a write that fails (disk full, permissions) fails in a
background thread; orbax raises it at the next save or wait, and `Checkpointer`
re-raises it as `CheckpointWriteError` naming the step and directory that failed.
"""

from __future__ import annotations

import contextlib
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from jaxmm import sharding


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the ones before it are intact."""


class CheckpointRestoreError(RuntimeError):
    """A checkpoint could not be read: damaged, or written by another model or config."""


class Checkpointer:
    """Keeps the newest `max_to_keep` checkpoints of a run under `directory`."""

    def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 3):
        self.directory = pathlib.Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=True,
                enable_async_checkpointing=True,
                # Torn saves of a killed run, left as `STEP.orbax-checkpoint-tmp`.
                cleanup_tmp_directories=True,
            ),
        )
        self._pending_step: int | None = None  # the save that may still be writing
        self._closed = False

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step (None when there is none)."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict[str, Any]) -> None:
        """Starts an asynchronous save of `state` and the iterator state `data_state`.

        Raises `CheckpointWriteError` if the previous save failed or this one cannot start.
        """
        # Orbax waits for the previous save before starting one; waiting here first tells
        # its failure apart from this save's.
        self.wait()
        self._pending_step = step
        with self._naming_failures():
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
                ),
                force=True,
            )

    def all_steps(self) -> list[int]:
        """The steps of every complete checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
        """Restores checkpoint `step` onto `target` (abstract arrays carrying shardings).

        Raises:
            CheckpointRestoreError: naming the checkpoint, with orbax's reason (its first
                line; the whole error is chained): missing files, or arrays whose shapes or
                tree differ from `target`'s.
        """
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()
                ),
            )
        except Exception as error:
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            raise CheckpointRestoreError(
                f"could not restore checkpoint {step} from {self.directory / str(step)}: "
                f"{type(error).__name__}: {reason}"
            ) from error
        return restored["state"], restored["data"]

    def wait(self) -> None:
        """Blocks until the pending save is on disk; raises `CheckpointWriteError` if it failed."""
        with self._naming_failures():
            self._manager.wait_until_finished()
        self._pending_step = None

    def close(self) -> None:
        """Waits for the pending save and releases orbax's threads; calling it again is a no-op."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            self._manager.close()

    @contextlib.contextmanager
    def _naming_failures(self):
        """Re-raises an error of orbax's as a `CheckpointWriteError` naming the pending save."""
        try:
            yield
        except Exception as error:
            step, self._pending_step = self._pending_step, None
            raise CheckpointWriteError(
                f"could not write checkpoint {step} to {self.directory / str(step)}: {error}"
            ) from error


def restore_variables(directory: pathlib.Path, mesh: Mesh) -> tuple[dict[str, Any], int]:
    """`(variables, step)` of the newest checkpoint under a run's `checkpoints` folder, each
    array replicated over `mesh` (the optimizer state is not read).

    The restore target takes its shapes from the checkpoint's own metadata and its shardings
    from `mesh`: a checkpoint written on 8 devices restores on 1, and the other way round.

    Raises:
        FileNotFoundError: no complete checkpoint in `directory`.
    """
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory.parent} has no checkpoint (no {directory.name}/)")
    # Handlers for both items the trainer writes, so orbax can read their metadata.
    manager = ocp.CheckpointManager(
        directory.absolute(),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler()},
    )
    try:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"{directory} holds no complete checkpoint")
        saved = manager.item_metadata(step)["state"]
        replicated = sharding.replicated(mesh)
        target = {
            key: jax.tree.map(
                lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated),
                saved[key],
            )
            for key in ("params", "model_state")
            if key in saved
        }
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=target,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True,  # params and model state; not the optimizer's
                )
            ),
        )["state"]
    finally:
        manager.close()
    return {"params": restored["params"], **restored.get("model_state", {})}, int(step)
