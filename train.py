"""Train a jaxmm model.

    python train.py --config=configs/clip_small.py --workdir=runs/clip_small
    python train.py --config=configs/clip_small.py:smoke --config.total_steps=10

Any config field can be overridden with `--config.FIELD=VALUE`; an unknown field
is an error. Re-running a command with the same workdir resumes it; while a run is
going, another one started on its workdir stops at once, naming it. Exit status 0
means the run finished; bad input ends it with one line `error: ...` and status 1
(`JAXMM_TRACEBACK=1` shows the traceback).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import jaxmm.train  # noqa: E402
from jaxmm import cli  # noqa: E402
from jaxmm.train.checkpoint import CheckpointRestoreError, CheckpointWriteError  # noqa: E402
from jaxmm.train.workdir_lock import WorkdirLockedError  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, logs and metrics go here (default runs/NAME).")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config_path = flags.FLAGS["config"].config_filename
    workdir = flags.FLAGS.workdir or os.path.join(
        "runs", os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
    )
    logging.info("workdir: %s", workdir)
    metrics = jaxmm.train.run(flags.FLAGS.config, workdir)
    if jax.process_index() == 0:
        print(f"\nFinished. Workdir: {workdir}")
        for key in sorted(metrics):
            print(f"  {key:32s} {metrics[key]:.4f}")


if __name__ == "__main__":
    cli.run(main, errors=(CheckpointRestoreError, CheckpointWriteError, WorkdirLockedError))
