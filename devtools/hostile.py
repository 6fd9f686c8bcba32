"""Hostile job-dir contents for the hook tests: what a job's user can leave at a name root opens.

Each plant makes one kind of entry at `path` (as root; `as_user` then gives it to the job's user, as if
the user had made it). `root_file` is a root-owned file on the same filesystem, for the hard link.
"""

from __future__ import annotations

import os
import pwd
import socket

from devtools.hooknode import USER

DEEP = 3000   # deeper than Python's recursion limit and than any fd-per-level walk could hold


def as_user(path: str) -> None:
    user = pwd.getpwnam(USER)
    os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)


def plant_fifo(root_file: str, path: str) -> None:
    os.mkfifo(path)


def plant_link_to_shadow(root_file: str, path: str) -> None:
    os.symlink("/etc/shadow", path)


def plant_link_to_dir(root_file: str, path: str) -> None:
    os.symlink("/etc", path)


def plant_hardlink_to_root_file(root_file: str, path: str) -> None:
    os.link(root_file, path)   # as on a node with fs.protected_hardlinks=0


def plant_hardlink_to_own_file(root_file: str, path: str) -> None:
    own = path + ".mine"
    with open(own, "w") as fh:
        fh.write("1\n")
    as_user(own)
    os.link(own, path)


def plant_zero_device(root_file: str, path: str) -> None:
    os.mknod(path, 0o666 | 0o020000, os.makedev(1, 5))   # /dev/zero: endless data


def plant_socket(root_file: str, path: str) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.close()


def plant_huge_file(root_file: str, path: str) -> None:
    with open(path, "wb") as fh:
        fh.truncate(1 << 40)


def plant_locked_dir(root_file: str, path: str) -> None:
    os.mkdir(path)
    os.mkfifo(os.path.join(path, "fifo"))
    os.chmod(path, 0)


def plant_deep_tree(root_file: str, path: str) -> None:
    os.mkdir(path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(DEEP):
        os.mkdir("d", dir_fd=fd)
        os.mkfifo("f", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)


PLANTS = (plant_fifo, plant_link_to_shadow, plant_link_to_dir, plant_hardlink_to_root_file,
          plant_hardlink_to_own_file, plant_zero_device, plant_socket, plant_huge_file, plant_locked_dir,
          plant_deep_tree)
# Every name root opens, reads or removes in the job dir after the handover.
ROOT_NAMES = ("vmm.pid", "seed.iso", "overlay.qcow2", "vm.json")


def plant(kind, root_file: str, path: str) -> None:
    """Put one hostile entry at `path`, replacing what is there, owned as its maker would own it."""
    if os.path.lexists(path):
        os.unlink(path) if not os.path.isdir(path) or os.path.islink(path) else os.rmdir(path)
    kind(root_file, path)
    if kind is not plant_hardlink_to_root_file:   # a hard link shares its inode: that one stays root's
        as_user(path)
