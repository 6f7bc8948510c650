"""End-to-end smoke training: metrics, checkpoints, resume equality, config errors."""

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

import jaxmm.train
from configs import clip_small
from jaxmm.train import loop as train_loop

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


def smoke_config(data_dir: str, **overrides):
    config = clip_small.get_config("smoke")
    config.data.data_dir = data_dir
    config.progress_bar = False
    config.update(overrides)
    return config


def read_metrics(workdir: pathlib.Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def train_losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def test_smoke_run_writes_metrics_checkpoints_and_tensorboard(tmp_path, data_dir):
    final = jaxmm.train.run(smoke_config(data_dir), tmp_path)
    records = read_metrics(tmp_path)
    losses = train_losses(records)
    assert sorted(losses) == [1, 2, 3, 4]
    assert all(0 < loss < 20 for loss in losses.values())
    eval_record = records[-1]
    for key in ("zeroshot/top1", "zeroshot/heldout_top1", "retrieval/i2t_r1", "retrieval/t2i_r5"):
        assert 0.0 <= eval_record[key] <= 1.0
        assert final[key] == eval_record[key]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4"]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "tokenizer.json").exists()


def test_resumed_run_matches_uninterrupted_run_step_for_step(tmp_path, data_dir, monkeypatch):
    config = smoke_config(data_dir, total_steps=6, checkpoint_every=3)
    full = tmp_path / "full"
    jaxmm.train.run(config, full)
    reference = train_losses(read_metrics(full))

    # Simulate an interruption right after the step-3 checkpoint: keep the state of
    # the run as it was then, and re-run the same command.
    interrupted = tmp_path / "interrupted"
    shutil.copytree(full, interrupted)
    shutil.rmtree(interrupted / "checkpoints" / "6")
    (interrupted / "metrics.jsonl").unlink()
    # The resumed run keeps one step in flight, as on accelerators: the host reads each
    # step's metrics after dispatching the next, which must change nothing it writes.
    monkeypatch.setattr(train_loop, "steps_in_flight", lambda: 1)
    jaxmm.train.run(config, interrupted)
    records = read_metrics(interrupted)
    resumed = train_losses(records)

    assert [r["step"] for r in records if "train/loss" in r] == [4, 5, 6]
    assert sorted(p.name for p in (interrupted / "checkpoints").iterdir()) == ["3", "6"]
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-6)


def test_run_with_gradient_accumulation_resumes_step_for_step(tmp_path, data_dir):
    config = smoke_config(data_dir, total_steps=4, checkpoint_every=2, grad_accum_steps=2)
    full = tmp_path / "full"
    jaxmm.train.run(config, full)
    reference = train_losses(read_metrics(full))

    interrupted = tmp_path / "interrupted"
    shutil.copytree(full, interrupted)
    shutil.rmtree(interrupted / "checkpoints" / "4")
    (interrupted / "metrics.jsonl").unlink()
    jaxmm.train.run(config, interrupted)
    resumed = train_losses(read_metrics(interrupted))
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-6)


def test_micro_batches_not_divisible_by_devices_are_rejected(tmp_path, data_dir):
    with pytest.raises(ValueError, match="grad_accum_steps=4 must be at least 1 and split"):
        jaxmm.train.run(smoke_config(data_dir, grad_accum_steps=4), tmp_path)


def test_rerunning_a_finished_run_trains_no_more(tmp_path, data_dir):
    config = smoke_config(data_dir, total_steps=2, checkpoint_every=2)
    first = jaxmm.train.run(config, tmp_path)
    second = jaxmm.train.run(config, tmp_path)
    assert train_losses(read_metrics(tmp_path)).keys() == {1, 2}
    assert second == pytest.approx(first)


def test_batch_not_divisible_by_devices_is_rejected(tmp_path, data_dir):
    with pytest.raises(ValueError, match="batch_size=12 is not divisible by the 8"):
        jaxmm.train.run(smoke_config(data_dir, batch_size=12), tmp_path)


def _train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_unknown_config_key_on_the_command_line_is_a_clear_error(tmp_path):
    result = _train_cli(
        "--config=configs/clip_small.py:smoke", f"--workdir={tmp_path}", "--config.batch_sise=8"
    )
    assert result.returncode != 0
    assert "batch_sise" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_config_argument_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown config argument 'smok'"):
        clip_small.get_config("smok")
