"""Shares (`mounts:`) on the node: the plan (pure). Their vendor-data `mounts:` is in cloudinit.py.

The prolog resolves each source as the job user (disks.shares) before it makes anything; the
resolved directories go into vm.json, where the launcher hands them to QEMU's virtio-9p or to
virtiofsd, both running as the job user.
"""

from __future__ import annotations

import pwd
from dataclasses import dataclass

from ..config import Config
from ..hypervisor import registry
from ..hypervisor.definition import Share
from ..mounts import expand_home, mount_tag
from ..spec import VMSpec


@dataclass(frozen=True)
class SharePlan:
    index: int
    source: str          # `$HOME` expanded, not yet resolved
    target: str
    tag: str
    readonly: bool


def user_home(user: str) -> str:
    try:
        return pwd.getpwnam(user).pw_dir
    except KeyError:
        return ""


def plan_shares(spec: VMSpec, home: str) -> tuple[SharePlan, ...]:
    return tuple(SharePlan(i, expand_home(m.source, home), m.target, mount_tag(m.target), m.readonly)
                 for i, m in enumerate(spec.mounts))


def share_transport(hypervisor: str, config: Config) -> str:
    """The transport the (concrete) hypervisor serves shares over: vm.json's and the guest's fstab's alike."""
    return registry.share_transport(hypervisor, config.mounts.transport)


def definition_fields(shares: tuple[SharePlan, ...], hypervisor: str, config: Config) -> dict:
    """VMDefinition's share fields; the prolog replaces each path with the directory it resolved as the user."""
    return {"shares": tuple(Share(s.tag, s.source, s.readonly) for s in shares),
            "share_transport": share_transport(hypervisor, config), "virtiofsd_binary": config.mounts.virtiofsd}
