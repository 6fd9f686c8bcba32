"""The imperative shell of the prolog: carry out a NodePlan as host objects, journaling each before making it.

Each step turns part of the plan into host objects (objects.py). A failure anywhere rolls back what was
recorded, in reverse order (teardown.undo_journal), so a failed prolog leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from ..disks.seed import build_seed_iso
from ..disks.volumes import VolumeInfo
from ..errors import NodeError, SlurmVmError
from ..hypervisor.definition import VMDefinition
from ..limits import DEFINITION_FILE
from .journal import Journal
from .objects import (HostObject, JobDir, JobFile, Macvtap, Overlay, PortFilterTable, Scope, Tap, VolumeReservation,
                      VxlanSegmentRef)
from .plan import NodePlan
from .system import HostSystem, System
from .teardown import undo_journal

# Root-only test hook: <state_dir>/fault-inject holds lines `STEP` (every job) or `STEP:JOBID`.
FAULT_FILE = "fault-inject"


@dataclasses.dataclass
class Preparation:
    """One prolog run: the plan, where it records, and what earlier steps found out."""

    plan: NodePlan
    journal: Journal
    system: System
    volumes: tuple[VolumeInfo, ...] = ()

    share_paths: dict[int, str] = dataclasses.field(default_factory=dict)

    @property
    def scope(self) -> Scope:
        return Scope(self.plan.state_dir, self.plan.job_id)

    def make(self, obj: HostObject) -> None:
        self.journal.record(obj.kind, obj.record())
        obj.create(self.system, self.scope)


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


def step_shares(prep: Preparation) -> None:
    """Resolve each share's directory as the job user; nothing is made, so nothing is journaled."""
    plan = prep.plan
    for share in plan.shares:
        prep.share_paths[share.index] = prep.system.check_share(share.source, plan.share_allowed, plan.home,
                                                                plan.user, plan.uid, plan.gid, share.readonly,
                                                                f"mounts[{share.index}].source")


def step_volumes(prep: Preparation) -> None:
    """The user's volumes, checked as the user, then reserved on the node."""
    plan = prep.plan
    if not plan.volumes:
        return
    prep.volumes = tuple(prep.system.check_volume(path, plan.user, plan.uid, plan.gid, readonly)
                         for path, readonly in plan.volumes)
    prep.make(VolumeReservation(prep.volumes))


def step_job_dir(prep: Preparation) -> None:
    prep.make(JobDir(prep.plan.job_dir))


def step_overlay(prep: Preparation) -> None:
    plan = prep.plan
    prep.make(Overlay(plan.overlay, base=plan.base_image, base_format=plan.base_format, size=plan.disk_size,
                      qemu_img=plan.qemu_img, base_size=plan.base_size))


def step_seed(prep: Preparation) -> None:
    seed = prep.plan.seed
    prep.make(JobFile(seed.path, build_seed_iso(seed.meta_data, seed.user_data, seed.network_config,
                                                seed.vendor_data)))


def step_underlay(prep: Preparation) -> None:
    """A VXLAN job: the node's guard devices hold the VXLAN ports and its rules keep users and guests off them
    (permanent, made by `slurm-vm node setup` at boot; remade here if missing). Not journaled: never undone."""
    if prep.plan.underlay is not None:
        prep.system.ensure_underlay(prep.plan.underlay)


def step_nics(prep: Preparation) -> None:
    plan = prep.plan
    for nic in plan.nics:
        if nic.kind == "vxlan":
            segment = VxlanSegmentRef(nic.vni, nic.parent, port=nic.port, mtu=nic.mtu, private=nic.private,
                                      unicast_local=nic.unicast_local, unicast_peers=nic.unicast_peers)
            prep.make(segment)
            prep.make(Tap(nic.ifname, plan.uid, plan.gid, bridge=nic.bridge, mtu=nic.mtu))
        elif nic.kind == "macvtap":
            prep.make(Macvtap(nic.ifname, nic.parent, nic.mac, nic.mode, plan.uid, plan.gid, nic.device_path))
        else:
            prep.make(Tap(nic.ifname, plan.uid, plan.gid, bridge=nic.bridge, mtu=nic.mtu))


def step_filters(prep: Preparation) -> None:
    """Anti-spoofing on every port of an untrusted network (networks/portfilter.py), one nft transaction,
    after the ports exist and before the user can start a guest on them."""
    if prep.plan.port_filters:
        prep.make(PortFilterTable(prep.plan.port_filters))


def resolved_definition(definition: VMDefinition, volumes: tuple[VolumeInfo, ...],
                        share_paths: dict[int, str] | None = None) -> VMDefinition:
    """The plan leaves volume formats as `auto` and share paths as the user wrote them; the as-user checks
    found each volume's format and each share's real directory (what the VMM, as the user, opens)."""
    formats = {info.path: info.format for info in volumes}
    disks = tuple(dataclasses.replace(d, format=formats[d.path]) if d.role == "volume" else d
                  for d in definition.disks)
    paths = share_paths or {}
    shares = tuple(dataclasses.replace(s, path=paths.get(i, s.path)) for i, s in enumerate(definition.shares))
    return dataclasses.replace(definition, disks=disks, shares=shares)


def step_definition(prep: Preparation) -> None:
    definition = resolved_definition(prep.plan.definition, prep.volumes, prep.share_paths)
    text = definition.to_json()
    VMDefinition.from_json(text)   # the launcher's own check, before root hands anything over
    prep.make(JobFile(definition.path(DEFINITION_FILE), text.encode("utf-8")))


def step_handover(prep: Preparation) -> None:
    """Give the job dir and what root made in it to the job's user (the launcher runs as that user)."""
    prep.system.give_dir_to_user(prep.plan.job_dir, prep.plan.uid, prep.plan.gid)


STEPS: tuple[tuple[str, Callable[[Preparation], None]], ...] = (
    ("shares", step_shares),      # the user's own directories and files are checked, as the user, first:
    ("volumes", step_volumes),    # root makes nothing for a job whose input is at fault
    ("job_dir", step_job_dir),
    ("overlay", step_overlay),
    ("seed", step_seed),
    ("underlay", step_underlay),
    ("nics", step_nics),
    ("filters", step_filters),
    ("definition", step_definition),
    ("handover", step_handover),
)


def prepare_node(plan: NodePlan, journal: Journal, system: System | None = None) -> None:
    """Run every step; on any failure undo the journal and re-raise (the caller reports it)."""
    system = system or HostSystem()
    fault = _injected_fault(plan.state_dir, plan.job_id)
    prep = Preparation(plan, journal, system)
    current = ""
    try:
        for current, step in STEPS:
            if fault == current:
                raise NodeError(f"fault injected at step {current} (remove {plan.state_dir}/{FAULT_FILE})")
            step(prep)
    except BaseException as exc:
        rollback = undo_journal(plan.state_dir, journal, system)
        if not rollback.errors:
            journal.remove()
        if isinstance(exc, SlurmVmError):
            leftover = f" (rollback incomplete, the epilog retries: {'; '.join(rollback.errors)})" \
                if rollback.errors else ""
            exc.args = (f"step {current}: {exc}{leftover}",)
        raise
