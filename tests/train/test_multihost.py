"""A real multi-process run: 2 processes x 4 CPU devices on loopback, talking through
JAX's distributed runtime and gloo collectives, train exactly like 1 process x 8 devices."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

import jaxmm.train
from configs import clip_small

REPO = pathlib.Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _losses(workdir: pathlib.Path) -> dict[int, float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    config = clip_small.get_config("smoke")
    config.progress_bar = False
    single = jaxmm.train.run(config, tmp_path / "single")  # conftest: 8 devices, 1 process

    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    command = [
        sys.executable,
        "train.py",
        "--config=configs/clip_small.py:smoke",
        f"--workdir={tmp_path / 'multi'}",
        "--config.progress_bar=False",
        "--config.distributed.enabled=True",
        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
        "--config.distributed.num_processes=2",
    ]
    processes = [
        subprocess.Popen(
            [*command, f"--config.distributed.process_id={i}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for i, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, f"process {i} failed:\n{output[-3000:]}"

    # Same global batches (the pipeline is process-count invariant) and the same
    # global-batch loss; only the order of cross-device sums may differ.
    single_losses, multi_losses = _losses(tmp_path / "single"), _losses(tmp_path / "multi")
    assert sorted(multi_losses) == sorted(single_losses) == [1, 2, 3, 4]
    np.testing.assert_allclose(
        [multi_losses[s] for s in sorted(multi_losses)],
        [single_losses[s] for s in sorted(single_losses)],
        rtol=1e-5,
    )
    multi = json.loads((tmp_path / "multi" / "final_metrics.json").read_text())
    assert multi.keys() == single.keys()
    np.testing.assert_allclose([multi[k] for k in single], list(single.values()), atol=1e-6)
    # One checkpoint per save step, written collectively, complete on disk.
    steps = sorted(int(p.name) for p in (tmp_path / "multi" / "checkpoints").iterdir())
    assert steps == [2, 4]
