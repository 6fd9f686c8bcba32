"""A share's host directory, checked on the node as the job user (never as root).

The prolog resolves the path in a child that has dropped to the user's uid, gid and groups, so a
symlink is followed exactly as far as the user could follow it, and the resolved directory must
still lie inside the admin's allowlist and outside every other user's home. The resolved path is what
the VMM (or virtiofsd) gets, and that process runs as the same user.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat

from ..errors import NodeError
from ..mounts import allowed_prefix, is_under, path_problem
from .safefs import run_as_user


def _resolve(source: str, readonly: bool, allowed: tuple[str, ...], home: str,
             uid: int) -> tuple[str, str | None, str | None]:
    """Runs as the user: (resolved path, what is wrong with it or None, the other user whose home holds it
    or None). Everything that touches the path is here, in the bounded child: it may be on a hung mount."""
    try:
        resolved = os.path.realpath(source, strict=True)
        st = os.stat(resolved)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise NodeError("does not exist on this node") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise NodeError("you may not reach it") from None
        raise NodeError(exc.strerror or str(exc)) from None
    prefix = allowed_prefix(resolved, allowed, home)
    other = _other_users_home(resolved, prefix, uid) if prefix is not None else None
    if not stat.S_ISDIR(st.st_mode):
        return resolved, "is not a directory", other
    mode = os.R_OK | os.X_OK | (0 if readonly else os.W_OK)
    if not os.access(resolved, mode, effective_ids=True):
        return resolved, ("you may not read it" if readonly else "you may not read and write it "
                          "(set `readonly: true` to share it read-only)"), other
    return resolved, None, other


def _other_users_home(path: str, stop: str, uid: int) -> str | None:
    """The first directory from `path` up to (not including) `stop` that is another user's home."""
    current = path
    while is_under(current, stop) and current != stop and current != "/":
        try:
            owner = os.stat(current).st_uid
            entry = pwd.getpwuid(owner)
        except (OSError, KeyError):
            entry = None
        if entry is not None and owner != uid and os.path.normpath(entry.pw_dir) == current:
            return entry.pw_name
        current = os.path.dirname(current)
    return None


def check_share_as_user(source: str, allowed: tuple[str, ...], home: str, uid: int, gid: int,
                        groups: list[int], readonly: bool) -> str:
    """The resolved directory to share. Raises NodeError saying what is wrong (the caller names the field)."""
    resolved, problem, other = run_as_user(uid, gid, groups, _resolve, source, readonly, allowed, home, uid)
    if path_problem(resolved, False) is not None:
        raise NodeError(f"resolves to {resolved!r}, a path that cannot be shared (space, comma or control "
                        "character)")
    prefix = allowed_prefix(resolved, allowed, home)
    if prefix is None:
        raise NodeError(f"resolves to {resolved}, outside the directories the admins allow ({', '.join(allowed)})")
    if other is not None:
        raise NodeError(f"resolves to {resolved}, inside the home of user {other}")
    if problem is not None:
        raise NodeError(problem)
    return resolved
