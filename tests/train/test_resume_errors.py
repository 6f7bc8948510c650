"""A workdir whose checkpoint cannot be resumed gives an error naming it and saying why;
nothing in the workdir is lost. A split the config names but the data lacks fails before
any training."""

import json
import shutil

import pytest

import jaxmm.train
from configs import clip_small
from jaxmm.train.checkpoint import CheckpointRestoreError


def _config(**changes):
    config = clip_small.get_config("smoke")
    config.progress_bar = False
    config.total_steps = 2
    for key, value in changes.items():
        config[key] = value
    return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    jaxmm.train.run(_config(), workdir)
    return workdir


def test_checkpoint_of_another_model(finished_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    config = _config(total_steps=3)  # extending a run is fine, so it is not reported
    config.model.image.width = 48
    with pytest.raises(CheckpointRestoreError) as error:
        jaxmm.train.run(config, workdir)
    message = str(error.value)
    assert f"could not restore checkpoint 2 from {workdir / 'checkpoints' / '2'}" in message
    assert "model.image.width: 32 -> 48" in message
    assert "total_steps" not in message
    # The run's own record is intact: its config and its checkpoint.
    assert json.loads((workdir / "config.json").read_text())["model"]["image"]["width"] == 32
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]


def test_damaged_checkpoint(finished_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    state = workdir / "checkpoints" / "2" / "state"
    data_files = sorted(p for p in state.rglob("*") if p.is_file() and p.parent.name == "d")
    data_files[0].unlink()  # one array's bytes gone, as after a partial delete or copy
    with pytest.raises(CheckpointRestoreError) as error:
        jaxmm.train.run(_config(total_steps=3), workdir)
    message = str(error.value)
    assert "could not restore checkpoint 2" in message
    assert "differs" not in message  # same config: only the damage advice
    assert f"delete that step's folder under {workdir / 'checkpoints'}" in message


def test_missing_eval_split_fails_before_training(tmp_path):
    config = _config()
    config.eval.split = "tset"
    with pytest.raises(ValueError, match=r"dataset 'clip_shapes' at .*Unknown split 'tset'"):
        jaxmm.train.run(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
