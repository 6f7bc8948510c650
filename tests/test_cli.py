"""The commands as a user runs them: exit status 0 on success, one line on bad input, and one
run per workdir (`train.py`, `python -m jaxmm.evaluate`, `python -m jaxmm.classify`)."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxmm.train import workdir_lock

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = "--config=configs/clip_small.py:smoke"


def command(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python ARGS` in the repository root, as a user types it."""
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The `error: ...` line a failed command ends with; fails the test on a traceback."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    return last


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[pathlib.Path, str, subprocess.CompletedProcess]:
    """A 2-step smoke CLIP trained by `python train.py`: `(workdir, tfds data_dir, result)`."""
    workdir = tmp_path_factory.mktemp("run")
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    result = command(
        "train.py",
        SMOKE,
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.total_steps=2",
        "--config.progress_bar=False",
    )
    return workdir, data_dir, result


def test_train_succeeds_with_status_0(smoke_run):
    workdir, _, result = smoke_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Finished. Workdir: {workdir}" in result.stdout
    assert json.loads((workdir / "final_metrics.json").read_text())
    # The lock is released with the run; the file stays, empty.
    assert (workdir / workdir_lock.LOCK_FILE).read_text() == ""


def test_evaluate_succeeds_with_status_0(smoke_run, tmp_path):
    workdir, data_dir, _ = smoke_run
    result = command(
        "-m",
        "jaxmm.evaluate",
        SMOKE,
        f"--checkpoint={workdir}",
        f"--config.data.data_dir={data_dir}",
        f"--out={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert "zeroshot/top1" in metrics and "zeroshot/top1" in result.stdout


def test_evaluate_of_a_missing_checkpoint_is_one_line(tmp_path):
    line = one_line_error(command("-m", "jaxmm.evaluate", SMOKE, f"--checkpoint={tmp_path}/no"))
    assert line == f"error: --checkpoint: {tmp_path}/no does not exist"


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            [SMOKE, "--config.totl_steps=3"],
            "error: --config.totl_steps=3: configs/clip_small.py:smoke has no field totl_steps "
            "(did you mean total_steps?)",
        ),
        (
            [SMOKE, "--config.learning_rate=0.1"],
            "error: --config.learning_rate=0.1: configs/clip_small.py:smoke has no field "
            "learning_rate (did you mean optim.learning_rate?)",
        ),
        (
            ["--config=configs/clip_smal.py", "--config.total_steps=3"],
            "error: --config=configs/clip_smal.py: no such file (did you mean "
            "configs/clip_small.py?)",
        ),
        (
            [SMOKE, "--config.total_steps=abc"],
            "error: --config.total_steps=abc: expected an int (configs/clip_small.py:smoke has "
            "total_steps=4): invalid literal for int() with base 10: 'abc'",
        ),
        (
            ["--config=configs/clip_small.py:smok"],
            "error: --config=configs/clip_small.py:smok: unknown config argument 'smok'; use "
            "'smoke' or nothing",
        ),
        (
            [SMOKE, "--workdr=runs/x"],
            "error: Unknown command line flag 'workdr'. Did you mean: workdir ?",
        ),
    ],
    ids=["unknown-key", "elsewhere", "no-such-file", "wrong-type", "get-config", "unknown-flag"],
)
def test_command_line_mistakes_are_one_line(args, expected, tmp_path):
    result = command("train.py", f"--workdir={tmp_path}", *args)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [expected]
    assert not any(tmp_path.iterdir())


def test_evaluate_names_an_unknown_config_key_in_one_line(tmp_path):
    args = ["-m", "jaxmm.evaluate", SMOKE, f"--checkpoint={tmp_path}", "--config.eval.spilt=a"]
    assert command(*args).stderr.splitlines() == [
        "error: --config.eval.spilt=a: configs/clip_small.py:smoke has no field eval.spilt "
        "(did you mean eval.split?)"
    ]


def test_help_is_no_failure():
    result = command("train.py", "--help")
    assert result.returncode == 0 and "--workdir" in result.stdout


@pytest.fixture
def classifier(tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
    """`(weights, image)`: a 3-class `resnet_test` as a safetensors file, and a PNG."""
    safetensors = pytest.importorskip("safetensors.numpy")
    from flax import linen as nn

    from jaxmm import convert
    from jaxmm.models import create_model

    model = create_model("resnet_test", num_classes=3)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    # Positive values (BatchNorm variances among them) keep the outputs finite; an eager
    # `model.init` would take most of the test's time.
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.uniform(0.05, 0.15, s.shape), nn.unbox(shapes))
    weights = tmp_path / "resnet_test.safetensors"
    safetensors.save_file(convert.to_torch("resnet_test", variables, num_classes=3), weights)
    image = tmp_path / "image.png"
    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(image)
    return weights, image


def test_classify_succeeds_with_status_0_and_fails_in_one_line(classifier, tmp_path):
    weights, image = classifier
    args = ["-m", "jaxmm.classify", "--model=resnet_test", f"--weights={weights}", "--size=32"]
    result = command(*args, str(image))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("class ") == 3
    line = one_line_error(command(*args, str(tmp_path / "missing.png")))
    assert "missing.png" in line


HOLDER = """
import sys, time
from jaxmm.train import workdir_lock
with workdir_lock.hold(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """A process holding the workdir `tmp_path / 'run'`, killed at the end."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workdir)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline() == "holding\n"
        yield process, workdir
    finally:
        process.kill()
        process.wait()


def in_use_message(workdir: pathlib.Path, pid: int) -> str:
    return f"the workdir {workdir} is in use by another run (host {socket.gethostname()}, pid {pid}"


def test_a_held_workdir_is_refused_and_free_again_once_its_holder_is_killed(holder):
    process, workdir = holder
    with pytest.raises(workdir_lock.WorkdirLockedError) as refused:
        with workdir_lock.hold(workdir):
            pass
    assert str(refused.value).startswith(in_use_message(workdir, process.pid))
    # SIGKILL leaves no chance to clean up: the lock goes with the process all the same.
    process.send_signal(signal.SIGKILL)
    process.wait()
    with workdir_lock.hold(workdir):
        assert f"pid {os.getpid()}," in (workdir / workdir_lock.LOCK_FILE).read_text()


def test_train_refuses_a_held_workdir_before_any_work(holder):
    process, workdir = holder
    line = one_line_error(command("train.py", SMOKE, f"--workdir={workdir}"))
    assert line.startswith(f"error: {in_use_message(workdir, process.pid)}")
    assert sorted(p.name for p in workdir.iterdir()) == [workdir_lock.LOCK_FILE]


def test_one_run_in_one_process_holds_its_workdir_until_it_ends(tmp_path):
    with workdir_lock.hold(tmp_path):
        with pytest.raises(workdir_lock.WorkdirLockedError, match=f"pid {os.getpid()},"):
            with workdir_lock.hold(tmp_path):
                pass
    with workdir_lock.hold(tmp_path):  # released on leaving, also after the refusal
        pass


TWO_PROCESSES = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from jaxmm.train import workdir_lock
try:
    with workdir_lock.hold(sys.argv[3]):
        print("held")
except workdir_lock.WorkdirLockedError as error:
    print(f"refused: {error}")
"""


def test_every_process_of_a_multi_process_run_stops_when_process_0_is_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    with workdir_lock.hold(tmp_path):  # another run holds the workdir
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", TWO_PROCESSES, f"127.0.0.1:{port}", str(i), str(tmp_path)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        # Only the lines of the script (gloo prints its own).
        outputs = [
            [
                line
                for line in p.communicate(timeout=120)[0].splitlines()
                if line.startswith(("held", "refused: "))
            ]
            for p in processes
        ]
    assert len(outputs[0]) == 1
    assert outputs[0][0].startswith(f"refused: {in_use_message(tmp_path, os.getpid())}")
    assert outputs[1] == [
        f"refused: the workdir {tmp_path} is in use by another run (see process 0's error)"
    ]
