"""The launcher's checkpoint steps (as the job's user): find and put in place a checkpoint to restore, save one
on preemption or at the time-limit warning, requeue, and tell preemption apart from a plain scancel."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

from ..errors import HypervisorError
from ..hypervisor.definition import VMDefinition
from . import group, store
from ..slurm.requeue import JobControl
from .manifest import (COMPRESSED_STATES, OVERLAY_NAME, CheckpointRefused, Expected, FileEntry, Manifest,
                       read_manifest, write_manifest)
from .files import copy_with_digest, restore_file
from ..hypervisor.checkpoint_settings import CheckpointSettings
from .vmm import Snapshotter

SAVE_TIMEOUT = 600.0
FRESH_SUFFIX = ".fresh"


def root_disk(defn: VMDefinition) -> str:
    for disk in defn.disks:
        if disk.role == "root":
            return disk.path
    raise HypervisorError("vm.json has no root disk to checkpoint")


def expected(defn: VMDefinition, settings: CheckpointSettings, vmm: str, accelerator: str) -> Expected:
    return Expected(job_id=defn.job_id, uid=os.getuid(), vmm=vmm, accelerator=accelerator, cpus=defn.cpus,
                    memory_bytes=defn.memory_bytes, macs=tuple(n.mac for n in defn.nics),
                    base_image=settings.base_image)


def find_restore(defn: VMDefinition, settings: CheckpointSettings, vmm: str,
                 accelerator: str) -> tuple[store.Found | None, str]:
    try:
        if settings.vm_count > 1:
            if settings.vm_index == 0:
                group.discard_aborted(store.job_dir(settings.user_dir, defn.job_id), settings.restart_count,
                                      os.getuid())
            return group.find_for_restore(settings.user_dir, expected(defn, settings, vmm, accelerator),
                                          settings.vm_index, settings.vm_count)
        return store.find_for_restore(settings.user_dir, expected(defn, settings, vmm, accelerator))
    except OSError as exc:
        return None, f"cannot read the checkpoint dir {settings.user_dir}: {exc.strerror}"


def put_overlay_in_place(defn: VMDefinition, found: store.Found) -> None:
    """The saved overlay replaces the fresh one; the fresh one is kept aside for a cold-boot fallback."""
    disk = root_disk(defn)
    os.replace(disk, disk + FRESH_SUFFIX)
    restore_file(os.path.join(found.path, found.manifest.overlay.name), disk)


def back_to_fresh_overlay(defn: VMDefinition) -> None:
    disk = root_disk(defn)
    if os.path.exists(disk + FRESH_SUFFIX):
        os.replace(disk + FRESH_SUFFIX, disk)


def restored(defn: VMDefinition, found: store.Found) -> bool:
    """The guest runs again from the checkpoint: the job's own checkpoint is no longer needed. A multi-VM job's
    checkpoint goes once every VM runs again. True if this call removed it."""
    try:
        os.unlink(root_disk(defn) + FRESH_SUFFIX)
    except FileNotFoundError:
        pass
    settings = defn.checkpoint
    if settings is not None and settings.vm_count > 1:
        return group.continued(os.path.dirname(found.path), settings.vm_index, settings.vm_count)
    store.remove(found.path)
    return True


def save(defn: VMDefinition, settings: CheckpointSettings, snap: Snapshotter, accelerator: str,
         reason: str, say=lambda _: None, frozen: bool = False) -> tuple[str, Manifest]:
    """The guest is paused (snap.pause()): save RAM and devices, copy the overlay, write the manifest last.
    The guest stays paused; the caller resumes it (if snap.keeps_running) or stops the VMM. A multi-VM job
    saves only once every VM of the job is paused, and only a whole job's save counts (group.py): RoundAborted
    otherwise."""
    jdir = store.job_dir(settings.user_dir, defn.job_id)
    store.ensure_private_dir(settings.user_dir, os.getuid())
    if settings.vm_count > 1:
        store.ensure_private_dir(jdir, os.getuid())
        part = lambda path: save_part(defn, settings, snap, path, accelerator, reason, frozen)  # noqa: E731
        rnd = group.save_together(jdir, settings.restart_count, settings.vm_index, settings.vm_count, reason,
                                  defn.job_id, pause=lambda: None, save_part=part, save_timeout=SAVE_TIMEOUT,
                                  say=say)
        if settings.vm_index == 0:
            group.prune(jdir, settings.keep, os.getuid())
        path = group.part_dir(rnd, settings.vm_index)
        return path, read_manifest(path, os.getuid())
    path = store.new_checkpoint_dir(jdir, os.getuid())
    manifest = save_part(defn, settings, snap, path, accelerator, reason, frozen)
    store.prune(jdir, settings.keep, os.getuid())
    return path, manifest


def save_part(defn: VMDefinition, settings: CheckpointSettings, snap: Snapshotter, path: str, accelerator: str,
              reason: str, frozen: bool = False) -> Manifest:
    """One VM's checkpoint into the empty directory `path`, its manifest last (`frozen`: the guest's filesystems
    were frozen through its agent, quiesce.py)."""
    version = snap.version()
    compress = settings.compress if snap.can_compress else "none"
    states, overlay = save_files(snap, path, compress, root_disk(defn))
    manifest = Manifest(job_id=defn.job_id, uid=os.getuid(), user=settings.user,
                        restart_count=settings.restart_count, reason=reason, created=time.time(),
                        image=settings.image, base_image=settings.base_image, base_size=_size(settings.base_image),
                        vmm=snap.vmm, vmm_version=version, accelerator=accelerator, cpus=defn.cpus,
                        memory_bytes=defn.memory_bytes, macs=tuple(n.mac for n in defn.nics),
                        instance_id=settings.instance_id,
                        compressed=any(e.name in COMPRESSED_STATES for e in states),
                        states=tuple(states), overlay=overlay, guest_frozen=frozen)
    write_manifest(path, manifest)
    return manifest


def save_files(snap: Snapshotter, path: str, compress: str, disk: str) -> tuple[list[FileEntry], FileEntry]:
    """The paused guest's state files and its overlay `disk`, copied into the empty directory `path`. The copy
    runs beside the save when the paused VMM leaves its disks alone (QEMU); should the overlay change during
    the save all the same (its size or mtime), it is copied again after it."""
    if not snap.disks_settled_when_paused:
        states = snap.save(path, compress, time.monotonic() + SAVE_TIMEOUT)
        return states, copy_with_digest(disk, path, OVERLAY_NAME)
    before = _identity(disk)
    with ThreadPoolExecutor(max_workers=1) as pool:
        copy = pool.submit(copy_with_digest, disk, path, OVERLAY_NAME)
        try:
            states = snap.save(path, compress, time.monotonic() + SAVE_TIMEOUT)
        finally:
            overlay = copy.result()
    if _identity(disk) != before:
        os.unlink(os.path.join(path, OVERLAY_NAME))
        overlay = copy_with_digest(disk, path, OVERLAY_NAME)
    return states, overlay


def _identity(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def job_control(defn: VMDefinition, settings: CheckpointSettings) -> JobControl:
    """The job's own Slurm calls (slurm/requeue.py), with the site's scontrol and timeout."""
    return JobControl(defn.job_id, settings.restart_count, settings.scontrol, settings.command_timeout)


__all__ = ["CheckpointRefused", "find_restore", "put_overlay_in_place", "back_to_fresh_overlay", "restored", "save",
           "job_control"]
