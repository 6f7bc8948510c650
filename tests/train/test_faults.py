"""Faults inside one process: non-finite steps, a full disk during a save, SIGTERM.

The process-level faults (SIGKILL at random moments, other device counts, several
processes) run train.py in subprocesses: tests/train/test_kill.py.
"""

import errno
import json
import os
import pathlib
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.path import async_path

import jaxmm.train
from configs import clip_small, resnet18_shapes
from jaxmm.data import pipeline
from jaxmm.train.checkpoint import Checkpointer, CheckpointWriteError
from jaxmm.train.preemption import PREEMPTED_EXIT_CODE, Preempted


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


def smoke_config(base, data_dir: str, **overrides):
    config = base.get_config("smoke")
    config.data.data_dir = data_dir
    config.progress_bar = False
    config.update(overrides)
    return config


def train_losses(workdir: pathlib.Path) -> dict[int, float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def read_state(workdir: pathlib.Path, step: int) -> dict:
    """Checkpoint `step`'s training state as saved, as numpy arrays."""
    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


class _IteratorWithHook:
    """The real training iterator, calling `hook(step, batch)` on each batch it hands out
    (steps counted from 1 in this process) and returning what the hook returns."""

    def __init__(self, inner, hook):
        self.inner, self.hook, self.step = inner, hook, 0

    def __next__(self):
        self.step += 1
        return self.hook(self.step, next(self.inner))

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


def hook_batches(monkeypatch, hook) -> None:
    real = pipeline.train_iterator
    monkeypatch.setattr(
        pipeline, "train_iterator", lambda *a, **k: _IteratorWithHook(real(*a, **k), hook)
    )


def nan_image_at(bad_step: int):
    def hook(step, batch):
        if step == bad_step:
            batch = {**batch, "image": batch["image"].copy()}
            batch["image"][0, 0, 0, 0] = np.nan
        return batch

    return hook


def test_nonfinite_stop_names_the_leaves_and_keeps_the_checkpoints_finite(
    tmp_path, data_dir, monkeypatch
):
    hook_batches(monkeypatch, nan_image_at(3))
    config = smoke_config(clip_small, data_dir, total_steps=4, checkpoint_every=1)
    message = "non-finite values at step 3 in loss, gradient/"
    with pytest.raises(FloatingPointError, match=message) as error:
        jaxmm.train.run(config, tmp_path)
    # One NaN pixel reaches every image-tower gradient through the patch embedding.
    assert "gradient/image_tower/" in str(error.value)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
    assert steps == [1, 2]  # keep_checkpoints=2; nothing from step 3 on
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(read_state(tmp_path, 2)))


def test_nonfinite_skip_leaves_params_optimizer_and_batchnorm_untouched(
    tmp_path, data_dir, monkeypatch
):
    hook_batches(monkeypatch, nan_image_at(3))
    # ResNet: BatchNorm statistics, which a NaN batch would poison too.
    config = smoke_config(
        resnet18_shapes, data_dir, nonfinite="skip", checkpoint_every=1, keep_checkpoints=4
    )
    jaxmm.train.run(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = {r["step"]: r["train/skipped_steps"] for r in records if "train/loss" in r}
    assert skipped == {1: 0, 2: 0, 3: 1, 4: 0}
    before, after, later = (read_state(tmp_path, s) for s in (2, 3, 4))
    assert (int(before["step"]), int(after["step"])) == (2, 3)
    for part in ("params", "opt_state", "model_state"):
        # Bit for bit: the skipped step applied nothing.
        jax.tree.map(np.testing.assert_array_equal, after[part], before[part])
    assert "batch_stats" in after["model_state"]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(later))
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), later["params"], after["params"])
    assert any(jax.tree.leaves(changed))  # step 4 trained again


def test_unknown_nonfinite_policy_is_rejected(tmp_path, data_dir):
    with pytest.raises(ValueError, match="nonfinite='ignore'"):
        jaxmm.train.run(smoke_config(clip_small, data_dir, nonfinite="ignore"), tmp_path)


# Orbax's background thread reports the failed write once more as its event loop shuts down.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_disk_full_during_a_save_stops_the_run_naming_step_and_path(
    tmp_path, data_dir, monkeypatch
):
    # Running as root (here and in CI), a read-only directory would not stop the write, and
    # there is no small filesystem to fill; so orbax's own file writer fails the way a full
    # disk makes it fail, for the files of checkpoint 4 only. The save is asynchronous: the
    # error surfaces when the next save (step 6) waits for it.
    real_write_text = async_path.write_text

    async def write_text(path, text):
        if "/4.orbax-checkpoint-tmp" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return await real_write_text(path, text)

    monkeypatch.setattr(async_path, "write_text", write_text)
    config = smoke_config(clip_small, data_dir, total_steps=8, checkpoint_every=2)
    directory = tmp_path / "checkpoints"
    with pytest.raises(CheckpointWriteError) as error:
        jaxmm.train.run(config, tmp_path)
    message = str(error.value)
    assert message.startswith(f"could not write checkpoint 4 to {directory / '4'}: ")
    assert "[Errno 28] No space left on device" in message
    assert max(train_losses(tmp_path)) == 6  # the run stopped at the save that found out
    assert not (tmp_path / "final_metrics.json").exists()

    monkeypatch.undo()
    assert sorted(p.name for p in directory.iterdir()) == ["2", "4.orbax-checkpoint-tmp"]
    checkpointer = Checkpointer(directory)
    assert checkpointer.latest_step() == 2  # the torn save is ignored (deleted before the next)
    checkpointer.close()
    state = read_state(tmp_path, 2)
    assert int(state["step"]) == 2
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))


def test_sigterm_finishes_the_step_saves_and_exits(tmp_path, data_dir, monkeypatch):
    """In process; test_restarts.py sends SIGTERM to train.py and checks the resumed run."""

    def sigterm_at_step_2(step, batch):
        if step == 2:  # arrives while step 2 is being prepared; the step still completes
            os.kill(os.getpid(), signal.SIGTERM)
        return batch

    hook_batches(monkeypatch, sigterm_at_step_2)
    handler = signal.getsignal(signal.SIGTERM)
    config = smoke_config(clip_small, data_dir, total_steps=5, checkpoint_every=4)
    with pytest.raises(Preempted, match="preempted at step 2") as stop:
        jaxmm.train.run(config, tmp_path)
    assert stop.value.code == PREEMPTED_EXIT_CODE == 143
    assert signal.getsignal(signal.SIGTERM) is handler  # the trainer's handler is gone
    assert sorted(train_losses(tmp_path)) == [1, 2]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]
    assert int(read_state(tmp_path, 2)["step"]) == 2
