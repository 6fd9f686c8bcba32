"""A running QEMU VM's root disk copied into a new, self-contained qcow2 while the guest runs (QMP
`blockdev-backup`, sync=full): the copy is the disk as it was when the job started (point in time), the chain
(overlay and its base) flattened. Where the guest runs the QEMU guest agent, its filesystems are frozen for the
moment the job starts and thawed at once (the copy is then filesystem-consistent); without one the copy is
crash-consistent, like the disk after a power cut at that moment.

Each QMP step is its own short connection (QEMU serves one QMP client at a time, and the launcher needs its turn
for the power button): add the target node and start the job; poll the job; dismiss it and remove the node.
"""

from __future__ import annotations

import time
from typing import Callable

from ..errors import HypervisorError, SlurmVmError
from ..hypervisor.definition import VMDefinition
from ..limits import QMP_SOCKET

ROOT_DRIVE = "d0"          # qemu_argv's id of the first disk: the root overlay
NODE = "svmsave"           # the target's node name and the job's id
POLL = 0.5
FREEZE_TIMEOUT = 20.0


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
           freeze: Callable[[], bool] = lambda: False, thaw: Callable[[], None] = lambda: None) -> tuple[float, bool]:
    """Copy the root disk into `target` (an empty qcow2 of the disk's size); the seconds it took and whether the
    guest's filesystems were frozen when the copy's point in time was taken (`freeze`, undone by `thaw`)."""
    started = time.monotonic()
    frozen = freeze()
    try:
        qmp(socket_path, *start_commands(target))
    except HypervisorError:
        _cleanup(qmp, socket_path)
        raise
    finally:
        if frozen:
            thaw()
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
    return time.monotonic() - started, frozen


def _cleanup(qmp: Callable, socket_path: str) -> None:
    for command in end_commands():
        try:
            qmp(socket_path, command)
        except HypervisorError:
            pass   # not there (the start failed half-way, or the job went already)


class QemuDiskSaver:
    """The registry's disk saver for this VMM: the running VM's root disk size, and its copy."""

    def __init__(self, defn: VMDefinition):
        from .qemu import QemuRuntime, qmp
        self.qmp = qmp
        self.socket = defn.path(QMP_SOCKET)
        self.runtime = QemuRuntime(defn, "", [])      # for its guest agent only: never started here

    def root_disk_size(self) -> int:
        return root_disk_size(self.qmp, self.socket)

    def save(self, target: str, timeout: float) -> tuple[float, bool]:
        return backup(self.qmp, self.socket, target, timeout, self._freeze, self._thaw)

    def _freeze(self) -> bool:
        try:
            return self.runtime.agent_freeze(FREEZE_TIMEOUT) >= 0
        except SlurmVmError:          # no agent (the guest never opened its port), or it failed: crash-consistent
            self._thaw()              # a freeze that timed out may still complete in the guest
            return False

    def _thaw(self) -> None:
        try:
            self.runtime.agent_thaw()
        except SlurmVmError:
            pass
