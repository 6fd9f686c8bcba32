"""A running QEMU VM's root disk copied into a new, self-contained qcow2 while the guest runs (QMP
`blockdev-backup`, sync=full): the copy is the disk as it was when the job started (point in time), the chain
(overlay and its base) flattened. A guest with an agent has its filesystems frozen while the job starts (the
moment the copy shows) and thawed at once after (`FrozenGuest`): the copy then holds clean filesystems. Without an
agent the copy is crash-consistent, like the disk after a power cut at that moment.

Each QMP step is its own short connection (QEMU serves one QMP client at a time, and the launcher needs its turn
for the power button): add the target node and start the job; poll the job; dismiss it and remove the node.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, ContextManager

from ..errors import HypervisorError, SlurmVmError
from ..hypervisor.definition import VMDefinition
from ..limits import AGENT_LOCK, AGENT_SOCKET, QMP_SOCKET

FREEZE_TIMEOUT = 20.0

ROOT_DRIVE = "d0"          # qemu_argv's id of the first disk: the root overlay
NODE = "svmsave"           # the target's node name and the job's id
POLL = 0.5


def start_commands(target: str, device: str = ROOT_DRIVE) -> list[tuple[str, dict]]:
    return [("blockdev-add", {"driver": "qcow2", "node-name": NODE,
                              "file": {"driver": "file", "filename": target}}),
            ("blockdev-backup", {"job-id": NODE, "device": device, "target": NODE, "sync": "full",
                                 "auto-finalize": True, "auto-dismiss": False})]


def end_commands() -> list[tuple[str, dict]]:
    return [("job-dismiss", {"id": NODE}), ("blockdev-del", {"node-name": NODE})]


def job_state(jobs: list[dict]) -> tuple[str, str | None]:
    """(status, error) of our job in `query-jobs`' answer; ("gone", None) when it is not there."""
    for job in jobs:
        if job.get("id") == NODE:
            return str(job.get("status")), job.get("error")
    return "gone", None


def root_disk_size(qmp: Callable, socket_path: str, device: str = ROOT_DRIVE) -> int:
    for block in qmp(socket_path, ("query-block", None))[0]:
        if block.get("device") == device:
            return int(block["inserted"]["image"]["virtual-size"])
    raise HypervisorError(f"the VM has no disk {device}")


def backup(qmp: Callable, socket_path: str, target: str, timeout: float,
           around_start: Callable[[], ContextManager] = contextlib.nullcontext) -> float:
    """Copy the root disk into `target` (an empty qcow2 of the disk's size); the seconds it took. `around_start`:
    a context held while the job starts (the guest frozen: the copy's point in time)."""
    started = time.monotonic()
    try:
        with around_start():
            qmp(socket_path, *start_commands(target))
    except HypervisorError:
        _cleanup(qmp, socket_path)
        raise
    try:
        while True:
            status, error = job_state(qmp(socket_path, ("query-jobs", None))[0])
            if status in ("concluded", "gone"):
                if error:
                    raise HypervisorError(f"the copy failed: {error}")
                break
            if time.monotonic() - started > timeout:
                qmp(socket_path, ("job-cancel", {"id": NODE}))
                raise HypervisorError(f"the copy took longer than {timeout:.0f}s")
            time.sleep(POLL)
    finally:
        _cleanup(qmp, socket_path)
    return time.monotonic() - started


def _cleanup(qmp: Callable, socket_path: str) -> None:
    for command in end_commands():
        try:
            qmp(socket_path, command)
        except HypervisorError:
            pass   # not there (the start failed half-way, or the job went already)


class FrozenGuest:
    """While held: the guest's filesystems frozen through its agent, if it has one (`frozen` says; `why_not` says
    why not). Thawed on the way out, whatever happened inside."""

    def __init__(self, defn: VMDefinition):
        self.defn = defn
        self.frozen = False
        self.why_not = ""
        self._session = None
        self._client = None

    def __enter__(self) -> "FrozenGuest":
        from ..hypervisor.guest_agent import no_agent_reason, session
        from .qemu import agent_port_open
        if agent_port_open(self.defn.path(QMP_SOCKET)) is False:
            self.why_not = no_agent_reason()
            return self
        try:
            self._session = session(self.defn.path(AGENT_SOCKET), self.defn.path(AGENT_LOCK), 5.0, 3.0)
            self._client = self._session.__enter__()
            self._client.execute("guest-fsfreeze-freeze", None, FREEZE_TIMEOUT)
            self.frozen = True
        except SlurmVmError as exc:
            self.why_not = str(exc)
            self._close()
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if self._client is not None:
                self._client.execute("guest-fsfreeze-thaw", None, 30.0)
        except SlurmVmError as exc:
            self.why_not = f"could not thaw the guest's filesystems: {exc}"
        finally:
            self._close()

    def _close(self) -> None:
        if self._session is not None:
            self._session.__exit__(None, None, None)
        self._session = self._client = None


class QemuDiskSaver:
    """The registry's disk saver for this VMM: the running VM's root disk size, and its copy (`frozen` afterwards:
    whether the guest's filesystems were frozen for its start)."""

    def __init__(self, defn: VMDefinition):
        from .qemu import qmp
        self.qmp = qmp
        self.defn = defn
        self.socket = defn.path(QMP_SOCKET)
        self.frozen = False

    def root_disk_size(self) -> int:
        return root_disk_size(self.qmp, self.socket)

    def save(self, target: str, timeout: float) -> float:
        guest = FrozenGuest(self.defn)
        seconds = backup(self.qmp, self.socket, target, timeout, lambda: guest)
        self.frozen = guest.frozen
        return seconds
