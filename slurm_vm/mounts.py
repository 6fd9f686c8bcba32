"""Host directories shared into the VM (`mounts:`): path rules, the admin allowlist, mount tags. Pure.

A source is an absolute path or `$HOME[/...]` (the job user's home). It must lie under one of the
admin's `mounts.allowed` prefixes (which may themselves be `$HOME`). A target is an absolute guest
path that does not cover a system directory. The node re-checks the source as the job user, after
resolving symlinks (slurm_vm/disks/shares.py), so a link cannot lead out of the allowlist.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

HOME = "$HOME"
MAX_MOUNTS = 8
TAG_MAX_9P = 31          # QEMU's virtio-9p mount_tag limit
TAG_MAX_VIRTIOFS = 36    # virtio-fs config space tag limit
TAG_MAX = min(TAG_MAX_9P, TAG_MAX_VIRTIOFS)

# Guest directories a share may not cover: the directory itself or anything below it.
SYSTEM_TREES = ("/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/proc",
                "/sys", "/dev", "/run", "/var", "/snap", "/lost+found")
# Guest directories a share may not replace (below them is fine: /home/alice/data, /mnt/x).
SYSTEM_DIRS = ("/", "/home", "/root", "/mnt", "/media", "/opt", "/srv", "/tmp")


# Commas end a QEMU/virtiofsd option, whitespace ends an fstab field, a quote ends the quoted field of the
# cloud-init `mounts:` line (node/cloudinit.py): such paths are refused, not escaped.
_UNSAFE = re.compile(r"[\s,\\'\"\x00-\x1f\x7f]")


def path_problem(value: Any, allow_home: bool) -> str | None:
    """Why `value` is not an acceptable absolute (or `$HOME`-relative) normalised path, or None."""
    if not isinstance(value, str):
        return "expected a path"
    if "\x00" in value or "\n" in value:
        return "contains a NUL or newline character"
    if len(value) > 1024:
        return "path is too long"
    if _UNSAFE.search(value):
        return f"{value!r} contains a space, comma, quote, backslash or control character; rename the directory"
    rest = value
    if allow_home and (value == HOME or value.startswith(HOME + "/")):
        rest = value[len(HOME):] or "/"
    elif "$" in value:
        return f"{value!r}: only `$HOME` at the start is expanded" if allow_home else f"{value!r}: no `$` allowed"
    if not rest.startswith("/"):
        hint = "start it with / or $HOME" if allow_home else "start it with /"
        return f"{value!r} is not an absolute path; {hint}"
    parts = rest.split("/")[1:]
    if ".." in parts or "." in parts:
        return f"{value!r} contains '.' or '..'; give the real path"
    if rest != "/" and (os.path.normpath(rest) != rest or rest.startswith("//")):
        return f"{value!r} is not a normalised path; remove '//' and the trailing '/'"
    return None


def target_problem(target: str) -> str | None:
    """Why a guest directory may not be a mount target, or None."""
    for tree in SYSTEM_TREES:
        if target == tree or target.startswith(tree + "/"):
            return f"{target} is over the guest's system directory {tree}; mount it under /mnt, /data or /home/USER"
    if target in SYSTEM_DIRS:
        return f"{target} would hide a guest system directory; use a directory below it, e.g. /mnt/data"
    return None


def expand_home(path: str, home: str) -> str:
    """`$HOME[/x]` -> HOME[/x]; other paths unchanged."""
    if path == HOME:
        return home
    if path.startswith(HOME + "/"):
        return home.rstrip("/") + path[len(HOME):]
    return path


def is_under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def allowed_prefix(path: str, allowed: tuple[str, ...], home: str) -> str | None:
    """The allowlist entry (expanded) that holds `path`, or None."""
    for entry in allowed:
        prefix = expand_home(entry, home)
        if is_under(path, prefix):
            return prefix
    return None


def home_is_usable(home: str) -> bool:
    """A home that can stand for `$HOME`: absolute, normalised, not the root directory."""
    return home != "/" and path_problem(home, False) is None


_TAG_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def mount_tag(target: str) -> str:
    """A deterministic tag for a guest target, at most 31 characters (fits 9p and virtio-fs).

    `svm:` + a readable tail of the target + 8 hex digits of its SHA-256, so two targets never share a tag.
    The ':' makes cloud-init keep the tag as a device name (it treats `x:y` as a network source).
    """
    digest = hashlib.sha256(target.encode("utf-8")).hexdigest()[:8]
    tail = _TAG_SAFE.sub("-", target.strip("/"))[-(TAG_MAX - 4 - 9):].strip("-") or "root"
    return f"svm:{tail}-{digest}"
