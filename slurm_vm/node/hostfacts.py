"""What the prolog learns about its node to resolve `hypervisor: auto` (the one place it is resolved).

The concrete hypervisor, and the share transport it serves, go into vm.json and the guest's mount config
together, so that the guest mounts what the launcher serves.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ..config import Config
from ..hypervisor import registry
from ..hypervisor.kvm import kvm_usability
from ..spec import VMSpec


@dataclass(frozen=True)
class HostFacts:
    kvm_usable: bool = False              # by the job's user
    binaries: frozenset[str] = frozenset()   # the hypervisor binaries present and executable


def may_read_write(path: str, uid: int, gids: set[int]) -> bool:
    """Does the mode of `path` give uid (with gids) read and write access? (ACLs aside)"""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_uid == uid:
        wanted = stat.S_IRUSR | stat.S_IWUSR
    elif st.st_gid in gids:
        wanted = stat.S_IRGRP | stat.S_IWGRP
    else:
        wanted = stat.S_IROTH | stat.S_IWOTH
    return uid == 0 or st.st_mode & wanted == wanted


def gather(config: Config, user: str, uid: int, gid: int) -> HostFacts:
    try:
        gids = set(os.getgrouplist(user, gid))
    except (KeyError, OSError):
        gids = {gid}
    usable, _ = kvm_usability(access=lambda path: may_read_write(path, uid, gids))
    paths = (getattr(config.hypervisor, kind.binary_field) for kind in registry.HYPERVISORS.values())
    return HostFacts(usable, frozenset(p for p in paths if os.access(p, os.X_OK)))


def requested_hypervisor(spec: VMSpec, config: Config) -> str:
    """What the spec and the site ask for, before the node decides `auto`. A checkpoint restores only into
    the same VMM and `auto` may pick differently per node, so a checkpointing VM gets the last of the
    auto order, which every node has (docs/checkpoint.md)."""
    requested = spec.hypervisor if spec.hypervisor != registry.AUTO else config.hypervisor.default
    if spec.checkpoints and requested == registry.AUTO:
        return registry.AUTO_ORDER[-1]
    return requested


def concrete_hypervisor(spec: VMSpec, config: Config, facts: HostFacts) -> str:
    return registry.resolve(requested_hypervisor(spec, config), facts.kvm_usable,
                            lambda kind: getattr(config.hypervisor, kind.binary_field) in facts.binaries)
