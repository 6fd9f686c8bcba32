"""The VMM-neutral side of checkpoints: what the launcher (and a manual or multi-VM checkpoint) asks of a VMM.

Saving is three separate steps so that callers can compose them: a preemption pauses, saves and stops; a
manual checkpoint pauses, saves and resumes; a multi-VM job pauses every VM before any of them saves.

    snap = snapshotter(runtime)            # QemuSnapshotter or CloudHypervisorSnapshotter
    snap.pause()
    entries = snap.save(directory, compress, deadline)   # the state files, for the manifest
    snap.resume()                          # only if snap.keeps_running; else, or to end: runtime.hard_stop()

flow.save() writes a whole checkpoint (state, overlay, manifest last) around snap.save(). Restoring is a
runtime that starts the VMM from the saved state instead of booting (restoring_runtime).
"""

from __future__ import annotations

from typing import Protocol

from ..hypervisor import registry
from ..hypervisor.definition import VMDefinition
from ..hypervisor.runtime import Runtime
from .manifest import FileEntry
from .store import Found


class Snapshotter(Protocol):
    vmm: str              # qemu | cloud-hypervisor: the manifest's `vmm`
    can_compress: bool    # save() honours `compress` (auto | zstd | none)
    disks_settled_when_paused: bool   # pause() leaves the disks flushed and unwritten: the overlay can be
                                      # copied while save() runs
    keeps_running: bool   # the VMM lives on after save(), so resume() can continue the guest; cloud-hypervisor
                          # ends in save() (its qcow2 cache is flushed only on close: see launcher/ch_snapshot.py)

    def version(self) -> str:
        """The running VMM's version, for the manifest (a restore needs the same one)."""

    def pause(self) -> None:
        """Stop the guest's vCPUs; it stays paused until resume() or the VMM ends."""

    def save(self, directory: str, compress: str, deadline: float) -> list[FileEntry]:
        """The guest is paused: write its RAM and device state into `directory` (private, fsynced files) and
        flush its disks. Returns the files written, with sizes and sha256."""

    def resume(self) -> None:
        """Let the guest run again (after a failed save; after a successful one only if keeps_running)."""


def snapshotter(runtime: Runtime) -> Snapshotter:
    """The Snapshotter of a started runtime (the registry's, for the runtime's hypervisor)."""
    alive = lambda: runtime.proc is not None and runtime.proc.poll() is None  # noqa: E731
    return registry.snapshotter_class(runtime.hypervisor).of(runtime, alive)


def restoring_runtime(hypervisor: str, defn: VMDefinition, accelerator: str, cores: list[int],
                      found: Found) -> Runtime:
    """A runtime that continues the verified checkpoint `found` instead of booting. Its after_start raises
    CheckpointRefused when this node's VMM cannot take the state (the caller may boot afresh)."""
    return registry.restoring_runtime_class(hypervisor)(defn, accelerator, cores, found)
