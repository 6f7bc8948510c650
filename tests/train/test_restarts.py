"""Runs that die and come back: SIGKILL at random moments (mid-save included), SIGTERM in one
or two processes, and resuming on a different number of devices. Each restarted run must
end where an uninterrupted run ends.

train.py runs in subprocesses (a real kill, a different device count); a persistent
compilation cache keeps their restarts from compiling the same step again.
"""

import itertools
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import jaxmm.train
from configs import clip_small

REPO = pathlib.Path(__file__).resolve().parents[2]
TOTAL_STEPS = 12
# Orbax's log line at the start of each save; its writing goes on in background threads.
SAVE_STARTED = "Saving checkpoint at step {}"


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> pathlib.Path:
    """A dataset folder and a compilation cache shared by the module's runs."""
    return tmp_path_factory.mktemp("restarts")


def overrides(shared: pathlib.Path, **fields) -> dict:
    return dict(
        progress_bar=False,
        total_steps=TOTAL_STEPS,
        checkpoint_every=1,
        **{"data.data_dir": str(shared / "tfds")},
        **fields,
    )


def run_in_process(workdir: pathlib.Path, shared: pathlib.Path, **fields) -> None:
    config = clip_small.get_config("smoke")
    for key, value in overrides(shared, **fields).items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    jaxmm.train.run(config, workdir)


class TrainProcess:
    """train.py in a subprocess with `devices` CPU devices, its output going to a log file:
    an unread pipe could fill up and stall it, and with it the other process of a pair."""

    _launched = itertools.count()

    def __init__(self, workdir, shared, devices: int = 8, *extra: str, **fields):
        flags = [f"--config.{key}={value}" for key, value in overrides(shared, **fields).items()]
        env = {
            **os.environ,
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "JAX_COMPILATION_CACHE_DIR": str(shared / "jax_cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        }
        command = [sys.executable, "train.py", "--config=configs/clip_small.py:smoke"]
        self.log = shared / f"train-{next(self._launched)}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [*command, f"--workdir={workdir}", *flags, *extra],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_line(self, text: str, timeout: float = 600) -> None:
        """Waits until the process logs a line ending with `text`."""
        deadline = time.monotonic() + timeout
        while text + "\n" not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"no line {text!r} from train.py:\n{self.output()[-3000:]}")
            time.sleep(0.05)

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self) -> tuple[int, str]:
        """Waits for the process to end; its exit status and output."""
        return self.process.wait(timeout=600), self.output()


def complete_steps(workdir: pathlib.Path) -> list[int]:
    """Checkpoint steps on disk that orbax finished (temporary directories excluded)."""
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def read_checkpoint(workdir: pathlib.Path, step: int) -> tuple[dict, dict]:
    """Checkpoint `step`'s training state (numpy) and input-pipeline state."""
    path = workdir / "checkpoints" / str(step)
    state = ocp.StandardCheckpointer().restore(path / "state")
    return state, json.loads((path / "data" / "metadata").read_text())


def losses_from(workdir: pathlib.Path, first_line: int = 0) -> dict[int, float]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()[first_line:]
    records = [json.loads(line) for line in lines]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def line_count(path: pathlib.Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def assert_same_state(actual: dict, expected: dict, rtol: float) -> None:
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol), actual, expected
    )


@pytest.fixture(scope="module")
def reference(shared) -> pathlib.Path:
    """An uninterrupted run on 8 devices, every checkpoint kept."""
    workdir = shared / "reference"
    run_in_process(workdir, shared, keep_checkpoints=TOTAL_STEPS)
    return workdir


def copy_until(source: pathlib.Path, target: pathlib.Path, step: int) -> None:
    """`target`: the run in `source` as it was right after checkpoint `step`."""
    shutil.copytree(source, target)
    for path in (target / "checkpoints").iterdir():
        if int(path.name) > step:
            shutil.rmtree(path)
    (target / "metrics.jsonl").unlink()
    (target / "final_metrics.json").unlink(missing_ok=True)


@pytest.mark.slow
def test_killed_at_random_moments_resumes_from_the_last_complete_checkpoint(shared, reference):
    workdir = shared / "killed"
    rng = random.Random(0)
    # SIGKILL (no chance to react) 3 times, SIGTERM (preemption) once, each at a random
    # moment 0-300 ms after a save has started, while orbax writes it in the background.
    kills = [signal.SIGKILL, signal.SIGTERM, signal.SIGKILL, signal.SIGKILL]
    resumed_from = []
    for kill in kills:
        start = complete_steps(workdir)[-1] if (workdir / "checkpoints").exists() else 0
        resumed_from.append(start)
        # Checkpoint trigger - 1 is complete when save `trigger` starts (saves wait for the
        # one before), so every restart makes progress.
        trigger = start + 2 + rng.randrange(2)
        process = TrainProcess(workdir, shared)
        process.wait_for_line(SAVE_STARTED.format(trigger))
        time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(kill)
        status, output = process.finish()
        steps = complete_steps(workdir)
        if kill == signal.SIGTERM:
            # Preemption: the step in flight finished, its checkpoint completed, clean exit.
            assert status == 143, output[-3000:]
            assert f"preempted at step {steps[-1]}" in output
            assert "Traceback" not in output
        else:
            assert status == -signal.SIGKILL
        # Whatever was torn, the newest checkpoint orbax lists is whole and is exactly the
        # uninterrupted run's at that step (the same program on the same 8 devices).
        assert steps[-1] >= trigger - 1
        state, data = read_checkpoint(workdir, steps[-1])
        expected_state, expected_data = read_checkpoint(reference, steps[-1])
        assert_same_state(state, expected_state, rtol=0)
        assert data == expected_data
    assert len(set(resumed_from)) == len(kills)  # every restart made progress

    last_start = complete_steps(workdir)[-1]
    first_new_line = line_count(workdir / "metrics.jsonl")
    run_in_process(workdir, shared)
    resumed = losses_from(workdir, first_new_line)
    expected = losses_from(reference)
    assert sorted(resumed) == list(range(last_start + 1, TOTAL_STEPS + 1))
    # Bit for bit: 0 difference reached.
    assert resumed == {step: expected[step] for step in resumed}
    assert_same_state(
        read_checkpoint(workdir, TOTAL_STEPS)[0], read_checkpoint(reference, TOTAL_STEPS)[0], 0
    )


@pytest.mark.slow
def test_resumes_on_4_and_1_devices_and_back_on_8(shared, reference):
    expected = losses_from(reference)
    # Written on 8 devices (the reference), resumed on 4 and on 1.
    runs = {}
    for devices in (4, 1):
        workdir = shared / f"on_{devices}"
        copy_until(reference, workdir, step=3)
        process = TrainProcess(workdir, shared, devices, keep_checkpoints=TOTAL_STEPS)
        runs[devices] = workdir, process
    for devices, (workdir, process) in runs.items():
        status, output = process.finish()
        assert status == 0, f"{devices} devices:\n{output[-3000:]}"
        assert "resumed from step 3" in output
        resumed = losses_from(workdir)
        assert sorted(resumed) == list(range(4, TOTAL_STEPS + 1))
        # Only the order of the cross-device sums differs; max relative difference reached
        # 1.7e-7 on 4 devices, 8.7e-8 on 1.
        np.testing.assert_allclose(
            [resumed[s] for s in resumed], [expected[s] for s in resumed], rtol=1e-5
        )
    # Written on 4 devices (checkpoint 6 of the run above), resumed on 8.
    workdir = shared / "back_on_8"
    copy_until(runs[4][0], workdir, step=6)
    run_in_process(workdir, shared)
    resumed = losses_from(workdir)
    assert sorted(resumed) == list(range(7, TOTAL_STEPS + 1))
    # Reached 1.7e-7.
    np.testing.assert_allclose(
        [resumed[s] for s in resumed], [expected[s] for s in resumed], rtol=1e-5
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_and_stop_together(shared, reference):
    """2 processes x 4 CPU devices, joined through jax.distributed on loopback with gloo
    collectives, train exactly like 1 process x 8 devices; a SIGTERM that reaches only one
    of them stops both after the same step, and the run resumes in one process."""
    workdir = shared / "two_processes"
    port = _free_port()
    distributed = [
        "--config.distributed.enabled=True",
        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
        "--config.distributed.num_processes=2",
    ]
    processes = [
        TrainProcess(workdir, shared, 4, *distributed, f"--config.distributed.process_id={i}")
        for i in range(2)
    ]
    # Only process 1 hears of the preemption, in the middle of the run.
    processes[1].wait_for_line(SAVE_STARTED.format(3))
    processes[1].send_signal(signal.SIGTERM)
    results = [process.finish() for process in processes]
    steps = complete_steps(workdir)
    for status, output in results:
        assert status == 143, output[-3000:]
        assert f"preempted at step {steps[-1]}" in output
    assert steps[-1] < TOTAL_STEPS
    # Until then, the same global batches (the input pipeline does not depend on the process
    # count) and the same global-batch loss; only the order of cross-device sums differs.
    expected = losses_from(reference)
    before = losses_from(workdir)
    assert sorted(before) == list(range(1, steps[-1] + 1))
    np.testing.assert_allclose(
        [before[s] for s in before], [expected[s] for s in before], rtol=1e-5
    )

    # The collectively written checkpoint resumes in one process on 8 devices.
    first_new_line = line_count(workdir / "metrics.jsonl")
    run_in_process(workdir, shared)
    resumed = losses_from(workdir, first_new_line)
    assert sorted(resumed) == list(range(steps[-1] + 1, TOTAL_STEPS + 1))
    # Reached 1.6e-7 (2 processes, then 1, against 1 process throughout).
    np.testing.assert_allclose(
        [resumed[s] for s in resumed], [expected[s] for s in resumed], rtol=1e-5
    )
    final, expected_final = (
        json.loads((run / "final_metrics.json").read_text()) for run in (workdir, reference)
    )
    assert final.keys() == expected_final.keys()
    np.testing.assert_allclose(
        [final[k] for k in expected_final], list(expected_final.values()), atol=1e-6
    )
