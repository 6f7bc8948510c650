"""Stopping cleanly when the cluster asks: on SIGTERM, finish the step, checkpoint, exit.

Preemption (a spot VM reclaimed, a SLURM job requeued, a Kubernetes pod evicted) arrives as
SIGTERM, followed by SIGKILL after a grace period (30 s by default on Kubernetes). The
handler only records the request, because a signal handler runs between two bytecodes of
whatever the main thread was doing (possibly inside orbax or jax), where saving is not
safe; the loop asks `PreemptionWatch.should_stop(step)` after every step, checkpoints, and
raises `Preempted`, which ends the process with status `PREEMPTED_EXIT_CODE`.

In a multi-process run the notice reaches the hosts at different moments, yet they must all
stop after the same step: the checkpoint is written collectively, and a process that went
on alone would wait forever in the next step's collectives. So at every step the processes
all-gather their flags (one int32 each) and stop together if any of them was signalled.
JAX's own preemption sync manager (`multihost_utils.reached_preemption_sync_point`, used by
orbax's `reached_preemption`) agrees without a per-step collective, but it exists only under
`jax.distributed` and listens to SIGTERM through its own C++ handler, so a single-process run
would never hear of the signal; one mechanism for both cases is simpler to trust.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

# 128 + SIGTERM: what a shell reports for a process that SIGTERM ended, so a scheduler or a
# wrapper script treats the run as interrupted (to be restarted), never as finished (0).
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class Preempted(SystemExit):
    """Training stopped early at `step` on request; checkpoint `step` is complete on disk.

    A `SystemExit`, so `python train.py` ends with status `PREEMPTED_EXIT_CODE` and no
    traceback, while code that calls `jaxmm.train.run` itself can catch it by name.
    """

    def __init__(self, step: int):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step

    def __str__(self) -> str:
        return f"preempted at step {self.step}"


class PreemptionWatch:
    """A context in which SIGTERM asks the training loop to stop after the current step.

    The previous handler comes back on exit. Outside the main thread, where Python cannot
    install signal handlers, the watch does nothing (and says so in the log).
    """

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum = signum
        self._requested = False
        self._previous = None

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._on_signal)
        else:
            logging.warning(
                "not in the main thread: %s will not stop training cleanly",
                signal.Signals(self.signum).name,
            )
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def _on_signal(self, signum, frame) -> None:
        self._requested = True

    def should_stop(self, step: int) -> bool:
        """Whether any process was signalled; the same answer on every process at `step`.

        A collective in a multi-process run: every process must call it at every step.
        """
        stop = self._requested
        if jax.process_count() > 1:
            flags = multihost_utils.process_allgather(np.int32(stop))  # [processes]
            stop = bool(np.any(flags))
        if stop:
            logging.warning("preempted at step %d: saving a checkpoint, then exiting", step)
        return stop
