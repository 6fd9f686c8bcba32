"""Saving and restoring a QEMU guest over QMP, with commands that QEMU 7.2 (bookworm) and 10 (trixie) share.

Save: `stop`, `migrate` to `exec:cat > FILE` (or `exec:gzip -c > FILE`; 7.2 has no `file:` URI), wait for
`query-migrate` to say completed. QEMU flushes and inactivates the guest's disks when a migration completes,
so the overlay is then consistent and can be copied. Restore: QEMU started with `-incoming defer`, then
`migrate-incoming` from `exec:cat FILE` (or `gzip -dc`), wait until completed, `cont`.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import time

from ..errors import HypervisorError
from ..hypervisor.qemu import qmp
from .manifest import CHUNK, STATE_NAME, STATE_NAME_GZ, CheckpointRefused, FileEntry, sha256_of

MAX_BANDWIDTH = 1 << 40          # bytes/s: the guest is stopped, nothing to throttle for
POLL = 0.1


def state_name(compress: bool) -> str:
    return STATE_NAME_GZ if compress else STATE_NAME


def save_uri(path: str, compress: bool) -> str:
    quoted = shlex.quote(path)
    return f"exec:gzip -c -1 > {quoted}" if compress else f"exec:cat > {quoted}"


def load_uri(path: str, compress: bool) -> str:
    quoted = shlex.quote(path)
    return f"exec:gzip -dc {quoted}" if compress else f"exec:cat {quoted}"


def qemu_version(qmp_path: str) -> str:
    (info,) = qmp(qmp_path, ("query-version", None))
    q = info["qemu"]
    return f"{q['major']}.{q['minor']}.{q['micro']}"


def wait_migration(qmp_path: str, deadline: float, alive) -> None:
    while True:
        (info,) = qmp(qmp_path, ("query-migrate", None))
        status = info.get("status", "none")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise HypervisorError(f"migration {status}: {info.get('error-desc', 'no reason given')}")
        if not alive():
            raise HypervisorError("the hypervisor exited during the migration")
        if time.monotonic() > deadline:
            raise HypervisorError(f"migration still {status} at the deadline")
        time.sleep(POLL)


def save_state(qmp_path: str, path: str, compress: bool, deadline: float, alive) -> None:
    """Pause the guest and write its RAM and device state to `path`. The guest stays paused."""
    qmp(qmp_path, ("stop", None))
    write_state(qmp_path, path, compress, deadline, alive)


def write_state(qmp_path: str, path: str, compress: bool, deadline: float, alive) -> None:
    """The guest is paused (`stop`): write its RAM and device state to `path`."""
    qmp(qmp_path, ("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH}),
        ("migrate", {"uri": save_uri(path, compress)}))
    wait_migration(qmp_path, deadline, alive)


class QemuSnapshotter:
    """The Snapshotter (vmm.py) of a running QEMU, over QMP."""
    vmm = "qemu"
    can_compress = True
    keeps_running = True       # `cont` after a completed migration re-activates the disks

    def __init__(self, qmp_path: str, alive):
        self.qmp_path, self.alive = qmp_path, alive

    @classmethod
    def of(cls, runtime, alive) -> "QemuSnapshotter":
        return cls(runtime.qmp_path, alive)

    def version(self) -> str:
        return qemu_version(self.qmp_path)

    def pause(self) -> None:
        qmp(self.qmp_path, ("stop", None))

    def save(self, directory: str, compress: bool, deadline: float) -> list[FileEntry]:
        """One migration stream; QEMU flushes and inactivates the disks when it completes."""
        path = os.path.join(directory, state_name(compress))
        write_state(self.qmp_path, path, compress, deadline, self.alive)
        return [seal(path)]

    def resume(self) -> None:
        """Also after a failed or cancelled migration: the source can run again."""
        qmp(self.qmp_path, ("cont", None))


def seal(path: str) -> FileEntry:
    """A state file the VMM wrote: private, on disk (fsync), hashed for the manifest."""
    os.chmod(path, 0o600)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    size, digest = sha256_of(path)
    return FileEntry(os.path.basename(path), size, digest)


def load_state(qmp_path: str, path: str, compress: bool, deadline: float, alive) -> None:
    """QEMU was started with `-incoming defer` (and -S): load the state; the caller resumes with `cont`."""
    qmp(qmp_path, ("migrate-incoming", {"uri": load_uri(path, compress)}))
    try:
        wait_migration(qmp_path, deadline, alive)
    except HypervisorError as exc:
        raise CheckpointRefused(f"QEMU could not load the saved state: {exc}") from None


def copy_with_digest(src: str, dst_dir: str, name: str) -> FileEntry:
    """Copy a file into the checkpoint dir (0600), fsync it, and hash it on the way."""
    digest, size = hashlib.sha256(), 0
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd_out = os.open(os.path.join(dst_dir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                         os.O_CLOEXEC, 0o600)
        try:
            while chunk := os.read(fd_in, CHUNK):
                digest.update(chunk)
                os.write(fd_out, chunk)
                size += len(chunk)
            os.fsync(fd_out)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
    return FileEntry(name, size, digest.hexdigest())


def restore_file(src: str, dst: str) -> None:
    """Put the saved overlay in place of the fresh one the prolog made (same directory, atomic rename)."""
    tmp = dst + ".restoring"
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd_out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            remaining = os.fstat(fd_in).st_size
            while remaining > 0:
                copied = os.copy_file_range(fd_in, fd_out, min(remaining, 1 << 30))
                if copied == 0:
                    break
                remaining -= copied
            os.fsync(fd_out)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
    os.replace(tmp, dst)
