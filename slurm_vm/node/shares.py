"""Shares (`mounts:`) on the node: the plan (pure), the vendor-data `mounts:`, and the prolog step.

The prolog resolves each source as the job user (disks.shares) before it makes anything; the
resolved directories go into vm.json, where the launcher hands them to QEMU's virtio-9p or to
virtiofsd, both running as the job user.
"""

from __future__ import annotations

import pwd
from dataclasses import dataclass

import yaml

from ..config import Config
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


def share_transport(spec: VMSpec, config: Config) -> str:
    hypervisor = spec.hypervisor if spec.hypervisor != "auto" else config.hypervisor.default
    return "virtiofs" if hypervisor == "cloud-hypervisor" else config.mounts.transport


def definition_fields(shares: tuple[SharePlan, ...], config: Config) -> dict:
    return {"shares": [{"tag": s.tag, "path": s.source, "readonly": s.readonly} for s in shares],
            "share_transport": config.mounts.transport, "virtiofsd_binary": config.mounts.virtiofsd}


def mounts_vendor_data(shares: tuple[SharePlan, ...], transport: str, vendor_data: str | None) -> str | None:
    """Add cloud-init `mounts:` (one flow list per share, the form the tiny test guest reads too).

    The tags contain ':' so that cloud-init (22.4, Debian 12) keeps them as they are instead of
    looking for a block device of that name.
    """
    from ..hypervisor.shares import guest_fstype, guest_mount_options
    if not shares:
        return vendor_data
    base: dict = {}
    if vendor_data:
        loaded = yaml.safe_load(vendor_data)
        base = loaded if isinstance(loaded, dict) else {}
    base.pop("mounts", None)
    head = "#cloud-config\n" + (yaml.safe_dump(base, sort_keys=False, width=4096) if base else "")
    lines = [f"- ['{s.tag}', '{s.target}', '{guest_fstype(transport)}', "
             f"'{guest_mount_options(transport, s.readonly)}', '0', '0']" for s in shares]
    return head + "mounts:\n" + "".join(line + "\n" for line in lines)
