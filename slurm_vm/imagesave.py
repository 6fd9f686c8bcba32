"""`slurm-vm image save VM NAME`: a running VM's root disk becomes an image in the user's repository; the VM keeps
running.

The login side (as the user) checks the name and finds the running VM, then `srun --overlap` runs
`slurm-vm image-save-relay JOB NAME --boot IMAGE` on the VM's node, inside the job, as the user. The relay makes
an empty qcow2 of the disk's size in the user's repository, has the VMM copy the running disk into it (the
registry's disk saver: QEMU's `blockdev-backup`, launcher/qemu_backup.py), checks the result like any import
(self-contained, size limit, quota: disks/repository.finish) and names it. No root is involved at any step.

Where the guest runs the QEMU guest agent its filesystems are frozen for the moment the copy starts (a
filesystem-consistent copy); without one the copy is crash-consistent: what the guest had written to its disk
when the save started is there, what sat in its page cache is not (`sync` in the guest first).
"""

from __future__ import annotations

import json
import os

from .config import USER_IMAGE_PREFIX, Config, is_user_image
from .errors import ImageError, SlurmError, SlurmVmError
from .lifecycle import node_command, spec_of_job
from .slurm import SlurmBackend
from .vmaccess import owned_vm, require_running

SAVE_TIMEOUT = 3600
RELAY_TIMEOUT = SAVE_TIMEOUT + 120


class SaveFailed(SlurmVmError):
    """The running VM's disk could not be saved (the VM runs on)."""


def boot_of(config: Config, image: str, directory: str) -> str:
    """The admin image a saved disk boots like: the VM's own image's, or (a user image) the one it boots like."""
    if not is_user_image(image):
        return image
    from .disks.repository import read_meta
    return read_meta(directory, image.removeprefix(USER_IMAGE_PREFIX))["boot"]


def save_vm(backend: SlurmBackend, config: Config, ref: str, user: str, name: str) -> str:
    from .catalog import user_repo
    from .disks import repository
    name = name.removeprefix(USER_IMAGE_PREFIX)
    repository.check_name(name)
    directory = user_repo(config, user)
    repository.ensure_user_dir(directory, os.getuid(), create=True)
    if name in repository.names(directory):
        raise ImageError(f"you already have an image {name}: `slurm-vm image rm {name}` first, or pick another name")
    job = owned_vm(backend, ref, user)
    spec = spec_of_job(job)
    if spec is None:
        raise SlurmError(f"cannot read the spec of job {job.job_id}")
    if spec.count > 1:
        raise ImageError(f"VM {job.vm_name} is one of {spec.count} VMs of its job: `image save` saves single-VM jobs")
    boot = boot_of(config, spec.image, directory)
    node = require_running(backend, job, "save its disk")
    argv = [config.slurm_vm_command, "image-save-relay", str(job.job_id), name, "--boot", boot]
    proc = node_command(job, node, argv, RELAY_TIMEOUT)
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise SlurmError(f"no answer from node {node}: {' '.join(proc.stderr.split()) or 'nothing said'}")
    if not answer["ok"]:
        raise SaveFailed(f"VM {job.vm_name} (job {job.job_id}): {answer.get('error')}; the VM runs on")
    return (f"saved the disk of VM {job.vm_name} (job {job.job_id}) as user:{name}: "
            f"{answer['virtual_size'] / 2**20:.0f} MiB disk, {answer['allocated'] / 2**20:.1f} MiB on disk, in "
            f"{answer['seconds']:.1f}s; the VM keeps running ("
            + ("its filesystems were frozen through its guest agent for the start of the copy)" if answer.get("frozen")
               else "no guest agent: crash-consistent, `sync` in the guest first)"))


def relay(config: Config, job_dir: str, user: str, name: str, boot: str) -> dict:
    """Node side, as the user inside the job: copy the running disk into the repository; the answer as a dict."""
    from .disks import repository
    from .hypervisor.definition import VMDefinition
    from .hypervisor.registry import disk_saver_class
    from .limits import DEFINITION_FILE
    from .disks.userimage import run_qemu_img
    try:
        with open(os.path.join(job_dir, DEFINITION_FILE)) as fh:
            defn = VMDefinition.from_json(fh.read())
    except OSError:
        return {"ok": False, "error": "the VM is not running on this node yet"}
    saver_class = disk_saver_class(defn.hypervisor)
    if saver_class is None:
        return {"ok": False, "error": f"its hypervisor {defn.hypervisor} cannot copy a running disk"}
    if boot not in config.images:
        return {"ok": False, "error": f"{boot!r} is not an admin image here"}
    directory = config.user_images.user_dir(user)
    if directory is None:
        return {"ok": False, "error": "this node's config has no user_images.repository"}
    saver = saver_class(defn)
    part = os.path.join(directory, f"{repository.PART_PREFIX}{name}.part-{os.urandom(4).hex()}.qcow2")
    cfg = config.user_images
    try:
        repository.check_name(name)
        repository.ensure_user_dir(directory, os.getuid(), create=True)
        size = saver.root_disk_size()
        if size > cfg.max_virtual_size:
            raise ImageError(f"its disk ({size >> 20} MiB) is above the site's limit for images")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.close(fd)
        run_qemu_img(config.hypervisor.qemu_img, ["create", "-q", "-f", "qcow2", part, str(size)])
        seconds, frozen = saver.save(part, SAVE_TIMEOUT)
        image = repository.finish(part, name, boot, directory, cfg.quota, cfg.max_virtual_size,
                                  config.hypervisor.qemu_img, f"save {defn.name} (job {defn.job_id})")
    except SlurmVmError as exc:
        return {"ok": False, "error": str(exc)}
    finally:
        if os.path.lexists(part):
            os.unlink(part)
    return {"ok": True, "seconds": seconds, "frozen": frozen, **image.as_json()}
