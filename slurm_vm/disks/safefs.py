"""File handling for a root process that works with paths users can influence.

Root never follows a path a user could redirect: files are created with O_EXCL|O_NOFOLLOW relative to
a directory fd, trees are removed with fd-based walks, and user-named files are opened in a child
process that has dropped to the user's uid, gid and groups.
"""

from __future__ import annotations

import os
import stat
import time
from typing import Any, Callable

from ..errors import NodeError

USER_CHECK_TIMEOUT = 10.0
REAP_WAIT = 1.0        # how long a killed child may take to die before it is left behind


def _check_parent(path: str) -> None:
    parent = os.path.dirname(path)
    st = os.lstat(parent)
    if not stat.S_ISDIR(st.st_mode):
        raise NodeError(f"{parent} is not a directory")
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise NodeError(f"{parent} must be owned by root and not group/world-writable")


def make_private_dir(path: str, uid: int, gid: int, mode: int = 0o700) -> None:
    """A fresh directory `path` owned by uid/gid with `mode`; a leftover at that path is removed first."""
    _check_parent(path)
    remove_tree_safely(path)
    os.mkdir(path, mode)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def remove_tree_safely(path: str) -> None:
    """Remove a file, symlink or directory tree without following symlinks. Missing is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        import shutil   # here: the prolog's path does not need it (~5 ms of imports)
        # rmtree uses fd-based traversal on Linux (shutil.rmtree.avoids_symlink_attacks)
        shutil.rmtree(path, onerror=_ignore_missing)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _ignore_missing(function, path, exc_info) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def write_file_atomic(dir_fd: int, name: str, data: bytes, uid: int, gid: int, mode: int = 0o600) -> None:
    """Create `name` in the directory `dir_fd` (never through a symlink), write `data`, set owner and mode."""
    if "/" in name or name in ("", ".", ".."):
        raise NodeError(f"invalid file name {name!r}")
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def run_as_user(uid: int, gid: int, groups: list[int], fn: Callable[..., Any], *args: Any,
                timeout: float = USER_CHECK_TIMEOUT) -> Any:
    """Run fn(*args) in a child process with the user's credentials; return its (picklable) result.

    An exception in the child comes back as NodeError with its message. The wait is bounded: after
    `timeout` seconds the child is killed and NodeError says the path did not answer. A child stuck on a
    hung mount (a FUSE daemon or NFS server that read the request and never answers) cannot even be
    killed: it is left behind, holding none of the hook's files or locks, and ends when the mount answers
    or goes away.
    """
    import pickle   # here (before the fork): only jobs with volumes need it
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        _child(read_fd, write_fd, uid, gid, groups, fn, args, pickle.dumps)
    os.close(write_fd)
    try:
        data = _read_all(read_fd, timeout)
    finally:
        os.close(read_fd)
        _reap(pid)
    if data is None:
        raise NodeError(f"did not answer within {timeout:.0f}s (checked as uid {uid}): a hung mount or "
                        "filesystem? Check the path on the node, or leave it out of the spec")
    try:
        status, value = pickle.loads(data)
    except (pickle.UnpicklingError, EOFError, ValueError):
        raise NodeError(f"the check as uid {uid} failed without an answer") from None
    if status != "ok":
        raise NodeError(value)
    return value


def _child(read_fd: int, write_fd: int, uid: int, gid: int, groups: list[int], fn: Callable[..., Any],
           args: tuple, dumps: Callable[[object], bytes]) -> None:
    """The forked child: keeps only its answer pipe (no lock, journal or slurmd pipe of the hook's survives
    in a child that may hang), drops to the user, runs fn and writes the pickled outcome."""
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(devnull, target)
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, os.sysconf("SC_OPEN_MAX"))
        os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        payload = ("ok", fn(*args))
    except BaseException as exc:  # anything the child hits goes back as a message
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        payload = ("error", message or type(exc).__name__)
    try:
        os.write(write_fd, dumps(payload))
    finally:
        os._exit(0)


def _read_all(fd: int, timeout: float) -> bytes | None:
    import select
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _reap(pid: int, wait: float = REAP_WAIT) -> None:
    """Collect the child; kill it if it still runs, and give up after `wait` s if it cannot die."""
    done, _ = os.waitpid(pid, os.WNOHANG)
    if done:
        return
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.02)
