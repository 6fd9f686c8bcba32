"""Saving and restoring a QEMU guest over QMP, with commands that QEMU 7.2 (bookworm) and 10 (trixie) share.

Save: `stop`, `migrate` to `exec:cat > FILE` (or `exec:gzip -c > FILE`; 7.2 has no `file:` URI), wait for
`query-migrate` to say completed. QEMU flushes and inactivates the guest's disks when a migration completes,
so the overlay is then consistent and can be copied. Restore: QEMU started with `-incoming defer`, then
`migrate-incoming` from `exec:cat FILE` (or `gzip -dc`), wait until completed, `cont`.
"""

from __future__ import annotations

import os
import shlex
import time

from ..errors import HypervisorError
from .qemu import qmp
from ..checkpoint.files import seal
from ..checkpoint.manifest import STATE_NAME, STATE_NAME_GZ, CheckpointRefused, FileEntry

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


def load_state(qmp_path: str, path: str, compress: bool, deadline: float, alive) -> None:
    """QEMU was started with `-incoming defer` (and -S): load the state; the caller resumes with `cont`."""
    qmp(qmp_path, ("migrate-incoming", {"uri": load_uri(path, compress)}))
    try:
        wait_migration(qmp_path, deadline, alive)
    except HypervisorError as exc:
        raise CheckpointRefused(f"QEMU could not load the saved state: {exc}") from None
