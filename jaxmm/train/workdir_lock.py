"""One run per workdir: a second run started on a busy workdir stops at once, naming the first.

Two runs in one workdir would write the same checkpoint steps and interleave their
metrics. `hold(workdir)` takes an exclusive `fcntl.flock` on `workdir/run.lock` for as
long as the run lasts. The operating system releases such a lock when its process ends,
however it ends, so a run killed with SIGKILL (or a machine that rebooted) never leaves a
stale lock behind: re-running the command resumes as usual. The file itself stays; it
holds the host and pid of the run that holds the lock, for the message the next run
prints, and is emptied when the lock is released.

In a multi-process run only process 0 takes the lock (the others share its workdir and
decide nothing about it), and every process learns whether it got it, so all of them stop
together rather than waiting at the next collective for a process 0 that has gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import socket
import time
from collections.abc import Iterator

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

try:
    import fcntl
except ImportError:  # Windows: no flock; runs go unguarded (see `hold`)
    fcntl = None

LOCK_FILE = "run.lock"
# flock errors of file systems that do not implement it (some network and FUSE mounts): the
# run goes on without the guard rather than not at all.
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class WorkdirLockedError(RuntimeError):
    """Another run holds the workdir."""


@contextlib.contextmanager
def hold(workdir: str | pathlib.Path) -> Iterator[None]:
    """Holds `workdir` for this run while the context is open.

    Args:
        workdir: the run's folder; it must exist.

    Raises:
        WorkdirLockedError: another process holds the workdir; the message names the workdir
            and that process's host and pid.
    """
    workdir = pathlib.Path(workdir)
    fd, error = _acquire(workdir / LOCK_FILE) if jax.process_index() == 0 else (None, "")
    if jax.process_count() > 1:
        # Process 0's verdict, for every process: 1 if it holds the lock (or could not try).
        held = multihost_utils.broadcast_one_to_all(np.int32(not error))
        if not held and not error:
            error = f"the workdir {workdir} is in use by another run (see process 0's error)"
    if error:
        raise WorkdirLockedError(error)
    try:
        yield
    finally:
        if fd is not None:
            os.ftruncate(fd, 0)  # while still locked: no one reads a departed run as holder
            os.close(fd)  # closing the last descriptor releases the lock


def _acquire(path: pathlib.Path) -> tuple[int | None, str]:
    """`(descriptor holding the lock, '')`, or `(None, why not)` if another process holds it.

    The descriptor is `None` with no error where the file system cannot lock.
    """
    if fcntl is None:
        logging.warning("%s: no file locking on this platform; the workdir is unguarded", path)
        return None, ""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 1024, 0).decode(errors="replace").strip() or "an unknown process"
        os.close(fd)
        if e.errno in _UNSUPPORTED:
            logging.warning("%s: the file system cannot lock (%s); workdir unguarded", path, e)
            return None, ""
        return None, (
            f"the workdir {path.parent} is in use by another run ({holder}); wait for it to end "
            f"or use another workdir"
        )
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {started}\n".encode(), 0)
    return fd, ""
