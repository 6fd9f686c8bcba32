"""lock_within: a real flock held by another process (fork), a time limit, and no symlink followed."""

from __future__ import annotations

import errno
import fcntl
import os
import time

import pytest

from slurm_vm.flocks import lock_within


class Busy(Exception):
    pass


def hold_in_child(path: str, seconds: float) -> int:
    """A child process takes the lock, says so on a pipe, and holds it for `seconds`."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(write, b"x")
        time.sleep(seconds)
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"x"
    os.close(read)
    return pid


def test_waits_for_the_holder_and_gives_up_at_the_limit(tmp_path):
    path = str(tmp_path / "a.lock")
    pid = hold_in_child(path, 1.0)
    try:
        started = time.monotonic()
        with pytest.raises(Busy):
            lock_within(path, 0.2, Busy)
        assert 0.2 <= time.monotonic() - started < 0.9
        fd = lock_within(path, 5, Busy)          # the holder exits after 1 s
        assert time.monotonic() - started < 5
        os.close(fd)
    finally:
        os.waitpid(pid, 0)


def test_a_symlink_is_never_followed(tmp_path):
    target = tmp_path / "target"
    target.write_text("keep")
    os.symlink(target, tmp_path / "b.lock")
    with pytest.raises(OSError) as caught:
        lock_within(str(tmp_path / "b.lock"), 0, Busy)
    assert caught.value.errno == errno.ELOOP and target.read_text() == "keep"
