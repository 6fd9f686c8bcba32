"""The user's checkpoint dir (checkpoint.dir with `%u`), made or checked by the prolog before the job runs.

Under a parent every user may write (mode 1777), anyone can make any name first: another user who makes
`<dir>/alice` before Alice does would own her checkpoint dir, and her saves would fail (or land where the
squatter reads them). So the prolog, before the VM exists:

1. as the user, makes the dir (mode 0700) if its parent lets the user, and reads who owns it;
2. if the user may not create it, and the parent and every directory above it are root's and closed to
   others (the layout the admin guide asks for: no one but root can make names there), makes it as root
   and gives it to the user;
3. refuses a dir that is not a plain directory of the user's, saying what the admins must do.

Each step runs in a child process with a time limit (disks.safefs.run_as_user): the storage may hang.
The launcher (as the user) then finds its dir in place.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass

from ..disks.safefs import run_as_user
from ..errors import CheckpointDirError, NodeError

ADMIN_HINT = "docs/admin-guide.md, Checkpoints"


@dataclass(frozen=True)
class DirState:
    kind: str            # ok | foreign | not-dir | missing-parent | no-access | untrusted-parent | root-refused
    owner: int = -1
    detail: str = ""


def _judge(st: os.stat_result, uid: int) -> DirState:
    if not stat.S_ISDIR(st.st_mode):
        return DirState("not-dir", st.st_uid)
    return DirState("ok") if st.st_uid == uid else DirState("foreign", st.st_uid)


def _as_user(path: str, uid: int) -> DirState:
    """Runs as the user: make the dir if missing (never its parents), then say whose it is."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        return DirState("missing-parent")
    except PermissionError:
        return DirState("no-access")
    return _judge(os.lstat(path), uid)


def _open_trusted(directory: str) -> int | None:
    """An fd of `directory`, reached from / without following links, if it and every directory above it
    are root's, it is not writable by group or others, and the ones above are not either unless sticky
    (/var/tmp: others cannot rename root's names there); else None."""
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    parts = [p for p in directory.split("/") if p]
    for i, part in enumerate(parts):
        above = os.fstat(fd)
        try:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            child = -1
        os.close(fd)
        if child < 0 or (above.st_mode & 0o022 and not above.st_mode & stat.S_ISVTX):
            if child >= 0:
                os.close(child)
            return None
        fd = child
        st = os.fstat(fd)
        if st.st_uid != 0 or (i == len(parts) - 1 and st.st_mode & 0o022):
            os.close(fd)
            return None
    return fd


def _as_root(path: str, uid: int, gid: int) -> DirState:
    """Runs as root, in a trusted parent only: make the dir and give it to the user."""
    parent = _open_trusted(os.path.dirname(path))
    if parent is None:
        return DirState("untrusted-parent")
    try:
        fd = _make_in(parent, os.path.basename(path))
        if isinstance(fd, DirState):
            return fd if fd.kind == "root-refused" else _judge(fd_stat(parent, os.path.basename(path)), uid)
    finally:
        os.close(parent)
    try:
        st = os.fstat(fd)
        if st.st_uid == 0:       # only root can make names here: ours to hand over
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o700)
            st = os.fstat(fd)
        return _judge(st, uid)
    finally:
        os.close(fd)


def _make_in(parent: int, name: str) -> int | DirState:
    """An fd of directory `name` in `parent`, made if missing; DirState("not-dir") for a link or file there,
    DirState("root-refused") when root may not make it (NFS with root_squash, a read-only export)."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        pass          # the admin's, or another node's prolog of the same job was first
    except OSError as exc:
        return DirState("root-refused", detail=exc.strerror or str(exc))
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except OSError as exc:
        return DirState("not-dir", detail=exc.strerror or str(exc))


def fd_stat(parent: int, name: str) -> os.stat_result:
    return os.stat(name, dir_fd=parent, follow_symlinks=False)


def ensure_user_dir(path: str, user: str, uid: int, gid: int, groups: list[int]) -> None:
    """Make sure `path` is `user`'s own directory; CheckpointDirError (fails the job) says what is wrong."""
    try:
        state = run_as_user(uid, gid, groups, _as_user, path, uid)
        if state.kind == "no-access":
            state = run_as_user(0, 0, [0], _as_root, path, uid, gid)
    except NodeError as exc:
        raise CheckpointDirError(f"checkpoint dir {path}: {exc}") from None
    problem = describe(state, path, user)
    if problem is not None:
        raise CheckpointDirError(problem)


def _name(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def describe(state: DirState, path: str, user: str) -> str | None:
    """The one line a refusal says (None: the dir is fine); what the admins must do is in it."""
    parent = os.path.dirname(path)
    fix_parent = (f"admins: make {parent} owned by root with mode 0755, so that the prolog makes each "
                  f"user's dir ({ADMIN_HINT})")
    if state.kind == "ok":
        return None
    if state.kind in ("foreign", "not-dir"):
        what = "belongs to" if state.kind == "foreign" else "is not a directory; it belongs to"
        return (f"checkpoint dir {path} {what} {_name(state.owner)}, not to {user}: no checkpoint can be saved "
                f"there. Ask the admins to remove it; {fix_parent}")
    if state.kind == "missing-parent":
        return f"checkpoint dir {path}: its parent {parent} does not exist on this node; {fix_parent}"
    detail = f" ({state.detail})" if state.detail else ""
    return (f"checkpoint dir {path}: {user} may not create it and root may not make it for them{detail}; "
            f"admins: make it (owner {user}, mode 0700), or {fix_parent[len('admins: '):]}")
