"""One save at a time per job, and `slurm-vm checkpoint --drop` (as the user, in their own checkpoint dir only).

Every save (preemption, time limit, manual) holds a shared flock on `<user dir>/.job-<id>.saving` from before its
checkpoint directory is made until its manifest is written (shared: the launchers of a multi-VM job save into
the same job dir at once). `--drop` takes the lock exclusively without waiting: while a save is under way it
refuses, so a drop never removes a checkpoint half-way through its save, and a save never writes into a
directory being removed. (One save at a time per launcher is the launcher's main loop's doing.) Linux NFS clients map flock to POSIX locks, which the
server arbitrates: the lock holds across nodes on shared storage.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
from typing import Iterator

from ..errors import SlurmVmError
from . import store

class SaveInProgress(SlurmVmError):
    """A save of the job is under way: its checkpoints are not dropped now."""


def _open_lock(jdir: str) -> int:
    return os.open(store.save_lock(jdir), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


@contextlib.contextmanager
def saving(user_dir: str, job_id: int, uid: int) -> Iterator[None]:
    """Hold the job's save lock, shared (waiting for a drop to finish); makes the user's dir (0700)."""
    jdir = store.job_dir(user_dir, job_id)
    while True:
        store.ensure_private_dir(user_dir, uid)
        fd = _open_lock(jdir)
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd).st_nlink > 0:
            break
        os.close(fd)            # a drop or a restore removed the lock file meanwhile: take the new one
    try:
        yield
    finally:
        os.close(fd)


def drop_job(user_dir: str, job_id: int, uid: int) -> list[str]:
    """Remove every checkpoint of the job from the user's dir; returns the removed checkpoint dirs.

    Refuses (SaveInProgress) while a save holds the lock; refuses a job dir that is not a real directory of
    `uid` (never follows a symlink out of the user's dir)."""
    jdir = store.job_dir(user_dir, job_id)
    try:
        st = os.lstat(jdir)
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        raise SlurmVmError(f"{jdir} is not a directory of yours; not touching it")
    fd = _open_lock(jdir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SaveInProgress(f"job {job_id} is saving a checkpoint right now; drop its checkpoints when the "
                                 "save has finished") from None
        removed = store.checkpoint_dirs(jdir)
        for path in removed:
            shutil.rmtree(path)        # rmtree does not follow symlinks inside
        for name in os.listdir(jdir):
            _remove(os.path.join(jdir, name))
        os.rmdir(jdir)
        os.unlink(store.save_lock(jdir))
        return removed
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    """Leftovers of an interrupted save beside the checkpoint dirs (temporary files)."""
    if stat.S_ISDIR(os.lstat(path).st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)
