"""The imperative shell of the prolog: carry out a NodePlan, journaling each object before making it.

Each step is a small function. A failure anywhere rolls back what was recorded, in reverse order
(teardown.undo_journal), so a failed prolog leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Callable

from ..errors import NodeError, SlurmVmError
from .journal import Journal
from ..limits import DEFINITION_FILE
from .layout import locks_dir
from .plan import NodePlan

# Root-only test hook: <state_dir>/fault-inject holds lines `STEP` (every job) or `STEP:JOBID`.
FAULT_FILE = "fault-inject"


class UserFault(SlurmVmError):
    """The job's own input is at fault (e.g. a volume its user cannot read): fail the job, not the node."""


@dataclass
class Prepared:
    volume_formats: dict[str, str]
    share_paths: dict[int, str] = dataclasses.field(default_factory=dict)


def _injected_fault(state_dir: str, job_id: int) -> str | None:
    try:
        with open(os.path.join(state_dir, FAULT_FILE), encoding="utf-8") as fh:
            lines = fh.read().split()
    except FileNotFoundError:
        return None
    for line in lines:
        step, _, job = line.partition(":")
        if not job or job == str(job_id):
            return step
    return None


def step_shares(plan: NodePlan, journal: Journal, out: Prepared) -> None:
    """Resolve each share's directory as the job user; nothing is made, so nothing is journaled."""
    from ..disks.shares import check_share_as_user
    if not plan.shares:
        return
    groups = os.getgrouplist(plan.user, plan.gid)
    for share in plan.shares:
        try:
            out.share_paths[share.index] = check_share_as_user(share.source, plan.share_allowed, plan.home, plan.uid,
                                                               plan.gid, groups, share.readonly)
        except SlurmVmError as exc:
            raise UserFault(f"mounts[{share.index}].source: {share.source} {exc}") from None


def step_job_dir(plan: NodePlan, journal: Journal, out: Prepared) -> None:
    from ..disks.safefs import make_private_dir
    journal.record("job_dir", path=plan.job_dir)
    # Root-owned until handover: root never writes into a directory the user can already change.
    make_private_dir(plan.job_dir, 0, 0, 0o700)


def step_volumes(plan: NodePlan, journal: Journal, out: Prepared) -> None:
    from ..disks.volumes import VolumeReservations, check_volume_as_user
    if not plan.volumes:
        return
    groups = os.getgrouplist(plan.user, plan.gid)
    infos = []
    for path, readonly in plan.volumes:
        try:
            infos.append(check_volume_as_user(path, plan.uid, plan.gid, groups, readonly))
        except SlurmVmError as exc:
            raise UserFault(str(exc)) from None
    reservations = VolumeReservations(locks_dir(plan.state_dir))
    journal.record("volume_reservations", job_id=plan.job_id)
    for info in infos:
        try:
            reservations.reserve(info, plan.job_id)
        except SlurmVmError as exc:
            raise UserFault(str(exc)) from None
        out.volume_formats[info.path] = info.format


def step_overlay(plan: NodePlan, journal: Journal, out: Prepared) -> None:
    from ..disks.overlay import DiskSizeError, create_overlay
    journal.record("file", path=plan.overlay)
    try:
        create_overlay(plan.base_image, plan.base_format, plan.overlay, plan.disk_size, 0, 0, plan.qemu_img)
    except DiskSizeError as exc:
        raise UserFault(str(exc)) from None


def step_seed(plan: NodePlan, journal: Journal, out: Prepared) -> None:
    from ..disks.seed import build_seed_iso
    image = build_seed_iso(plan.seed.meta_data, plan.seed.user_data, plan.seed.network_config, plan.seed.vendor_data)
    journal.record("file", path=plan.seed.path)
    _write_private_file(plan.seed.path, image)


def step_nics(plan: NodePlan, journal: Journal, out: Prepared) -> None:
    from ..networks import links
    for nic in plan.nics:
        if nic.kind == "vxlan":
            journal.record("vxlan_segment", vni=nic.vni, job_id=plan.job_id)
            bridge = links.ensure_vxlan_segment(nic.vni, plan.job_id, nic.parent, locks_dir(plan.state_dir),
                                                port=nic.port, mtu=nic.mtu, private=nic.private)
            journal.record("link", name=nic.ifname)
            links.create_tap(nic.ifname, plan.uid, plan.gid, bridge=bridge, mtu=nic.mtu)
        elif nic.kind == "macvtap":
            journal.record("link", name=nic.ifname)
            journal.record("file", path=nic.device_path)
            links.create_macvtap(nic.ifname, nic.parent, nic.mac, nic.mode, plan.uid, plan.gid,
                                 device_path=nic.device_path)
        else:
            journal.record("link", name=nic.ifname)
            links.create_tap(nic.ifname, plan.uid, plan.gid, bridge=nic.bridge, mtu=nic.mtu)


def step_definition(plan: NodePlan, journal: Journal, out: Prepared) -> None:
    definition = dict(plan.definition)
    definition["disks"] = [dict(d, format=out.volume_formats.get(d["path"], d["format"])) if d["role"] == "volume"
                           else d for d in definition["disks"]]
    path = os.path.join(plan.job_dir, DEFINITION_FILE)
    journal.record("file", path=path)
    _write_private_file(path, (json.dumps(definition, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def step_handover(plan: NodePlan, journal: Journal, out: Prepared) -> None:
    """Give the job dir and what root made in it to the job's user (the launcher runs as that user)."""
    dir_fd = os.open(plan.job_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for name in os.listdir(dir_fd):
            os.chown(name, plan.uid, plan.gid, dir_fd=dir_fd, follow_symlinks=False)
        os.fchown(dir_fd, plan.uid, plan.gid)
    finally:
        os.close(dir_fd)


def _write_private_file(path: str, data: bytes) -> None:
    from ..disks.safefs import write_file_atomic
    dir_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        write_file_atomic(dir_fd, os.path.basename(path), data, 0, 0, 0o600)
    finally:
        os.close(dir_fd)


STEPS: tuple[tuple[str, Callable[[NodePlan, Journal, Prepared], None]], ...] = (
    ("volumes", step_volumes),      # first: the user's own files are checked before root makes anything
    ("shares", step_shares),
    ("job_dir", step_job_dir),
    ("overlay", step_overlay),
    ("seed", step_seed),
    ("nics", step_nics),
    ("definition", step_definition),
    ("handover", step_handover),
)


def prepare_node(plan: NodePlan, journal: Journal) -> None:
    """Run every step; on any failure undo the journal and re-raise (the caller reports it)."""
    from .teardown import undo_journal
    fault = _injected_fault(plan.state_dir, plan.job_id)
    out = Prepared(volume_formats={})
    current = ""
    try:
        for current, step in STEPS:
            if fault == current:
                raise NodeError(f"fault injected at step {current} (remove {plan.state_dir}/{FAULT_FILE})")
            step(plan, journal, out)
    except BaseException as exc:
        rollback = undo_journal(plan.state_dir, journal)
        if not rollback.errors:
            journal.remove()
        if isinstance(exc, SlurmVmError):
            leftover = f" (rollback incomplete, the epilog retries: {'; '.join(rollback.errors)})" \
                if rollback.errors else ""
            exc.args = (f"step {current}: {exc}{leftover}",)
        raise
