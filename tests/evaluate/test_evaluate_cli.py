"""`python -m jaxmm.evaluate` on trained runs: the smoke CLIP run with its probes, a tfds
dataset under `tfds.testing.mock_data`, and the errors a user can make."""

import json
import pathlib
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds
from absl import flags

import jaxmm.train
from configs import clip_small
from jaxmm.data import pipeline
from jaxmm.evaluate import __main__ as cli

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory) -> tuple[pathlib.Path, str]:
    """A 4-step smoke CLIP run: `(workdir, tfds data_dir)`."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    workdir = tmp_path_factory.mktemp("clip_run")
    config = clip_small.get_config("smoke")
    config.data.data_dir = data_dir
    config.progress_bar = False
    jaxmm.train.run(config, workdir)
    return workdir, data_dir


@pytest.fixture
def parse_flags():
    """Parses flags as `python -m jaxmm.evaluate` would, and resets them after."""
    yield lambda *args: flags.FLAGS(["jaxmm.evaluate", *args])
    flags.FLAGS.unparse_flags()


def test_cli_reproduces_the_runs_metrics_and_adds_few_shot(clip_run, parse_flags, tmp_path, capsys):
    workdir, data_dir = clip_run
    parse_flags(
        f"--config={REPO / 'configs/clip_small.py'}:smoke",
        f"--checkpoint={workdir / 'checkpoints'}",
        f"--out={tmp_path}",
    )
    # ml_collections defines the `--config.FIELD` flags from sys.argv at import time, so
    # in-process overrides go to the parsed config (the subprocess test below covers them).
    config = flags.FLAGS.config
    config.data.data_dir = data_dir
    # The linear probe's solver compiles for seconds; the mock-data test below runs it.
    config.eval.few_shot = (1, 2)
    metrics = cli.main(["jaxmm.evaluate"])

    assert json.loads((tmp_path / cli.METRICS_FILE).read_text()) == metrics
    # The same weights and split as the run's own final evaluation: the same numbers.
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert {key: metrics[key] for key in final} == final
    assert "zeroshot/mean_class_top1" in metrics
    # The smoke split's 96 probe images (2 per class) allow at most 2 shots.
    for key in ("fewshot/k1_top1", "fewshot/k2_top1"):
        assert 0.0 <= metrics[key] <= 1.0
    printed = capsys.readouterr().out
    assert "fewshot/k2_top1" in printed and "zeroshot/top1" in printed


def test_defaults_write_into_the_run_folder_without_probes(clip_run):
    workdir, data_dir = clip_run
    config = clip_small.get_config("smoke")
    config.data.data_dir = data_dir
    metrics = cli.evaluate(config, workdir / "checkpoints" / "2")
    assert not any(key.startswith(("probe/", "fewshot/")) for key in metrics)
    assert json.loads((workdir / cli.METRICS_FILE).read_text()) == metrics


def test_tfds_dataset_under_mock_data(clip_run, tmp_path, monkeypatch):
    """The smoke CLIP evaluated on `cifar10` (tfds mock data): zero-shot with OpenAI's CIFAR
    prompts and both probes learnt on the train split; no captions, so no retrieval."""
    # tfds 4.9's mock data source breaks batched reads (see tests/train/test_configs.py).
    monkeypatch.setattr(
        pipeline, "_read_batch", lambda source, indices: [source[int(i)] for i in indices]
    )
    workdir, _ = clip_run
    config = clip_small.get_config("smoke")
    config.data.update(name="cifar10", builder_config="", data_dir=str(tmp_path / "tfds"))
    config.eval.update(templates="cifar10", probe_split="train", linear_probe=True, few_shot=(1, 3))
    with tfds.testing.mock_data(num_examples=64):
        metrics = cli.evaluate(config, workdir, out=tmp_path)
    assert set(metrics) == {
        "zeroshot/top1",
        "zeroshot/top5",
        "zeroshot/mean_class_top1",
        "probe/top1",
        "probe/C",
        "fewshot/k1_top1",
        "fewshot/k3_top1",
    }
    assert all(0 <= value <= 1 for key, value in metrics.items() if key != "probe/C")
    assert 1e-6 <= metrics["probe/C"] <= 1e6


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="--checkpoint: .*nowhere does not exist"):
        cli.evaluate(clip_small.get_config("smoke"), tmp_path / "nowhere")


def test_run_folder_without_its_tokenizer_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        cli.evaluate(clip_small.get_config("smoke"), tmp_path)


def test_unknown_config_key_on_the_command_line_is_named(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxmm.evaluate",
            "--config=configs/clip_small.py:smoke",
            f"--checkpoint={tmp_path}",
            "--config.eval.linear_prob=True",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "linear_prob" in result.stderr
    assert not (tmp_path / cli.METRICS_FILE).exists()


def test_probe_split_must_differ_from_the_scored_split(clip_run):
    workdir, data_dir = clip_run
    config = clip_small.get_config("smoke")
    config.data.data_dir = data_dir
    config.eval.few_shot = (1,)
    config.eval.probe_split = "test"
    with pytest.raises(ValueError, match="probe_split and eval.split are both 'test'"):
        cli.evaluate(config, workdir, out=workdir / "unused")
