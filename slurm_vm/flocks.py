"""An exclusive flock with a time limit: the one way slurm-vm waits for a lock file held by another process.

No imports from slurm_vm: every unit may use it (VXLAN segment locks, the image cache, the guest agent lock).
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from typing import Callable

OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def lock_within(path: str, timeout: float, busy: Callable[[], Exception], poll: float = 0.05) -> int:
    """The open descriptor of `path` (created 0600, never through a symlink) once this process holds its exclusive
    flock; close it to unlock. Raises `busy()` when another holder keeps it past `timeout` seconds (0: one try)."""
    fd = os.open(path, OPEN_FLAGS, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        if time.monotonic() >= deadline:
            os.close(fd)
            raise busy()
        time.sleep(poll)
