"""A macvtap's character device node that the job's user can open during the job and keep nothing of.

The launcher (the job's user) opens a macvtap through a device node. A node the user owned could be
hard-linked elsewhere or held as an O_PATH fd and reopened through /proc after the job, reaching a later
job's macvtap once the kernel reuses the minor number. So the node is:

- owned by root, mode 0600, in a root-owned directory (`<state_dir>/nics/<jobid>/`): the user can neither
  rename nor remove it, and with fs.protected_hardlinks=1 (checked) only a device node's owner may
  hard-link it;
- opened by the user through one POSIX ACL entry `user:<uid>:rw-`, which lives on the inode;
- revoked before it is unlinked (ACL removed, mode 0): every path and O_PATH fd to that inode loses access;
- a node that carries the device number of a macvtap being created is stale by definition (the kernel gives
  each live macvtap its own minor) and is revoked first, so a node left by a crash never reaches a new job.

An fd the launcher already opened stays bound to its own macvtap queue, which the kernel detaches when the
macvtap is deleted: it cannot reach a later macvtap.
"""

from __future__ import annotations

import errno
import os
import stat
import struct

from ..errors import NodeError

ACL_XATTR = "system.posix_acl_access"
ACL_VERSION = 2
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF
READ_WRITE = 0o6
PROTECTED_HARDLINKS = "/proc/sys/fs/protected_hardlinks"


def user_rw_acl(uid: int) -> bytes:
    """The xattr value of the access ACL `u::rw-,u:<uid>:rw-,g::---,m::rw-,o::---` (kernel format)."""
    entries = [(ACL_USER_OBJ, READ_WRITE, ACL_UNDEFINED_ID), (ACL_USER, READ_WRITE, uid),
               (ACL_GROUP_OBJ, 0, ACL_UNDEFINED_ID), (ACL_MASK, READ_WRITE, ACL_UNDEFINED_ID),
               (ACL_OTHER, 0, ACL_UNDEFINED_ID)]
    return struct.pack("<I", ACL_VERSION) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


def check_protected_hardlinks(path: str = PROTECTED_HARDLINKS) -> None:
    try:
        with open(path) as fh:
            value = fh.read().strip()
    except OSError:
        value = ""
    if value != "1":
        raise NodeError("fs.protected_hardlinks is not 1 on this node: job users could hard-link a macvtap's "
                        "device node; set it (sysctl fs.protected_hardlinks=1, Debian's default)")


def make_device_node(path: str, rdev: int, uid: int) -> None:
    """A root-owned character device node at `path` that only `uid` (and root) may open."""
    check_protected_hardlinks()
    revoke_same_device(os.path.dirname(os.path.dirname(path)), rdev)
    with_unlinked(path)
    os.mknod(path, stat.S_IFCHR | 0o600, rdev)
    os.chown(path, 0, 0, follow_symlinks=False)
    try:
        os.setxattr(path, ACL_XATTR, user_rw_acl(uid), follow_symlinks=False)
    except OSError as exc:
        with_unlinked(path)
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
            raise NodeError(f"the filesystem of {path} has no POSIX ACLs, which macvtap networks need; put "
                            "state_dir on one that has (ext4, xfs, tmpfs)") from None
        raise NodeError(f"cannot give the job's user access to {path}: {exc.strerror}") from None


def with_unlinked(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def revoke_device_node(path: str) -> None:
    """Take every access away from the node's inode (all its names and O_PATH fds), then unlink it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISCHR(st.st_mode):
        try:
            os.removexattr(path, ACL_XATTR, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
        os.chown(path, 0, 0, follow_symlinks=False)
        os.chmod(path, 0)
    os.unlink(path)


def revoke_same_device(root: str, rdev: int) -> list[str]:
    """Revoke nodes under `root`/*/ that carry `rdev`: leftovers of a job that did not clean up."""
    revoked = []
    try:
        job_dirs = os.listdir(root)
    except FileNotFoundError:
        return revoked
    for job in job_dirs:
        directory = os.path.join(root, job)
        try:
            names = os.listdir(directory)
        except (NotADirectoryError, FileNotFoundError):
            continue
        for name in names:
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == rdev:
                revoke_device_node(path)
                revoked.append(path)
    return revoked


def remove_job_nodes(directory: str) -> None:
    """Revoke every node in a job's directory and remove it. Idempotent."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        revoke_device_node(os.path.join(directory, name))
    os.rmdir(directory)
