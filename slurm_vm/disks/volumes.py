"""Persistent volumes: checked with the user's own rights, reserved so two running VMs cannot share one.

A reservation is node-local (a record file per volume, named by device and inode); across nodes,
QEMU's own image locking (file.locking=on) refuses a second writer on filesystems with POSIX locks.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Callable

from ..errors import NodeError, VolumeError
from .safefs import run_as_user

QCOW2_MAGIC = b"QFI\xfb"


@dataclass(frozen=True)
class VolumeInfo:
    path: str
    st_dev: int
    st_ino: int
    size: int
    format: str


def _probe(path: str, readonly: bool) -> VolumeInfo:
    """Runs as the user. Follows symlinks deliberately: the hypervisor, as the same user, will too."""
    flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.EISDIR,):
            raise NodeError("is a directory; give a disk image file or block device") from None
        verb = "read" if readonly else "read and write"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise NodeError(f"you may not {verb} it") from None
        if exc.errno == errno.ENOENT:
            raise NodeError("does not exist on this node") from None
        raise NodeError(exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise NodeError("is not a regular file or block device")
        size = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, 0, os.SEEK_SET)
        magic = os.read(fd, 4)
    finally:
        os.close(fd)
    return VolumeInfo(path, st.st_dev, st.st_ino, size, "qcow2" if magic == QCOW2_MAGIC else "raw")


def check_volume_as_user(path: str, uid: int, gid: int, groups: list[int], readonly: bool) -> VolumeInfo:
    try:
        return run_as_user(uid, gid, groups, _probe, path, readonly)
    except NodeError as exc:
        raise VolumeError(f"volume {path}: {exc}") from None


class VolumeReservations:
    def __init__(self, locks_dir: str):
        self.dir = os.path.join(locks_dir, "volumes")

    def _path(self, info: VolumeInfo) -> str:
        return os.path.join(self.dir, f"{info.st_dev}-{info.st_ino}")

    def reserve(self, info: VolumeInfo, job_id: int, is_alive: Callable[[int], bool] | None = None) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        path = self._path(info)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                owner = self._owner(path)
                if owner == job_id:
                    return
                if owner is not None and (is_alive is None or is_alive(owner)):
                    raise VolumeError(f"volume {info.path} is attached to job {owner}, which is still running here")
                os.unlink(path)  # a dead job's record
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{job_id} {info.path}\n")
            return
        raise NodeError(f"volume {info.path}: could not reserve it")

    @staticmethod
    def _owner(path: str) -> int | None:
        try:
            with open(path) as fh:
                first = fh.read(64).split()
        except FileNotFoundError:
            return None
        return int(first[0]) if first and first[0].isdigit() else None

    def holders(self) -> list[tuple[str, int]]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            owner = self._owner(os.path.join(self.dir, name))
            if owner is not None:
                out.append((name, owner))
        return out

    def release_job(self, job_id: int) -> None:
        for name, owner in self.holders():
            if owner == job_id:
                try:
                    os.unlink(os.path.join(self.dir, name))
                except FileNotFoundError:
                    pass
