"""File handling for a root process that works with paths users can influence.

Root never follows a path a user could redirect: files are created with O_EXCL|O_NOFOLLOW relative to
a directory fd, trees are removed with fd-based walks, and user-named files are opened in a child
process that has dropped to the user's uid, gid and groups.
"""

from __future__ import annotations

import errno
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


# Opening a path a user can write: never through a link, never waiting on a FIFO's writer or a device.
USER_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_OPEN_LEVELS = 64   # remove_tree_safely holds at most this many directories open at once


def read_user_file(path: str, max_bytes: int, owner: int | None = None) -> bytes | None:
    """The first `max_bytes` of a regular file that a user may have planted, replaced or removed.

    None (nothing read) when `path` is missing or is anything but a regular file with one name owned by
    `owner` (when given): a symlink, FIFO, socket, device, directory, a hard link to another file."""
    try:
        fd = os.open(path, USER_FILE_FLAGS)
    except OSError:   # missing, a symlink (ELOOP), a socket (ENXIO)
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or (owner is not None and st.st_uid != owner):
            return None
        return os.read(fd, max_bytes)
    finally:
        os.close(fd)


def remove_tree_safely(path: str, deadline: float | None = None) -> bool:
    """Remove a file, symlink or directory tree without following symlinks. Missing is fine.

    The walk is fd-based and iterative, so a user's tree of any depth, any kind of entries (FIFOs,
    sockets, hard links, files of any size) or a directory they made unreadable goes without a hang,
    a recursion limit or running out of file descriptors. With a `deadline` (time.monotonic()) the walk
    stops there: False means part of the tree is still there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    if not stat.S_ISDIR(st.st_mode):
        _unlink_missing_ok(path)
        return True
    top = os.open(path, _DIR_FLAGS)
    try:
        if not _empty_directory(top, deadline):
            return False
    finally:
        os.close(top)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    return True


MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8
FINDMNT_TIMEOUT = 10


def mounts_below(path: str) -> list[str]:
    """Mount points at or below `path`, deepest first (the kernel's table, through findmnt's JSON)."""
    prefix = path.rstrip("/") + "/"
    with open("/proc/self/mountinfo", "rb") as fh:   # the cheap check first: usually nothing is mounted there
        if _mountinfo_escaped(path.rstrip("/")).encode("utf-8", "surrogateescape") not in fh.read():
            return []
    import json
    import subprocess
    try:
        proc = subprocess.run(["findmnt", "-J", "-l", "-o", "TARGET"], capture_output=True, text=True,
                              timeout=FINDMNT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise NodeError(f"findmnt did not answer within {FINDMNT_TIMEOUT}s") from None
    if proc.returncode != 0:
        raise NodeError(f"findmnt failed: {proc.stderr.strip()}")
    targets = {fs.get("target", "") for fs in json.loads(proc.stdout or "{}").get("filesystems", [])}
    return sorted((t for t in targets if t.startswith(prefix) or t == path), key=len, reverse=True)


def _mountinfo_escaped(path: str) -> str:
    return path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")


def detach_mounts_below(path: str) -> list[str]:
    """Lazily unmount whatever was mounted at or inside `path` (a user's FUSE mount in the job dir: once its daemon
    is gone every lookup in it fails, and root must neither walk into it nor fail on it)."""
    points = mounts_below(path)
    if not points:
        return []
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    done = []
    for point in points:
        if libc.umount2(point.encode("utf-8", "surrogateescape"), MNT_DETACH | UMOUNT_NOFOLLOW) == 0:
            done.append(f"detached the mount at {point}")
        elif ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):   # gone meanwhile: fine
            raise OSError(ctypes.get_errno(), f"cannot detach the mount at {point}")
    return done


def _unlink_missing_ok(name: str, dir_fd: int | None = None) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _empty_directory(top: int, deadline: float | None = None) -> bool:
    """Remove everything below the open directory `top`, depth first, without recursion. Below
    MAX_OPEN_LEVELS open levels, a deeper directory is first moved up into `top` (renameat: no path
    walk a user could redirect), so a tree of any depth needs a bounded number of descriptors. False: the
    deadline came first."""
    stack: list[tuple[int, str]] = []   # (open subdirectory, its name in the directory below it)
    current = top
    try:
        while True:
            sub = _unlink_files(current, deadline)
            if sub is not None and len(stack) >= MAX_OPEN_LEVELS:
                os.rename(sub, f".svm-rm-{os.urandom(6).hex()}", src_dir_fd=current, dst_dir_fd=top)
            elif sub is not None:
                stack.append((os.open(sub, _DIR_FLAGS, dir_fd=current), sub))
                current = stack[-1][0]
            elif stack:
                fd, name = stack.pop()
                os.close(fd)
                current = stack[-1][0] if stack else top
                os.rmdir(name, dir_fd=current)
            else:
                return True
    except _OutOfTime:
        return False
    finally:
        for fd, _ in stack:
            os.close(fd)


class _OutOfTime(Exception):
    pass


def _unlink_files(dir_fd: int, deadline: float | None) -> str | None:
    """Unlink every entry of `dir_fd` that is not a directory; the name of one subdirectory, or None when
    the directory is empty."""
    while True:
        names = os.listdir(dir_fd)
        if not names:
            return None
        subdir = None
        for count, name in enumerate(names):
            if deadline is not None and count % 256 == 0 and time.monotonic() > deadline:
                raise _OutOfTime()
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                subdir = subdir or name
            else:
                _unlink_missing_ok(name, dir_fd)
        if subdir is not None:
            return subdir


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
