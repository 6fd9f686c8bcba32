"""Identities of non-VM hosts that a spec may not claim: the node's own addresses and MACs (checked on the node,
by the prolog, before anything is made or agreed). Pure check; networks.links.node_identities reads them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..errors import UserFault


@dataclass(frozen=True)
class NodeIdentities:
    addresses: frozenset = frozenset()               # every IP address on the node's interfaces
    macs: dict = field(default_factory=dict)         # MAC (lower case) -> interface, VM ports left out


def claims(spec) -> bool:
    """Whether the spec names any static address or MAC (only then the node's identities are read)."""
    return any(ref.address or ref.mac for ref in spec.networks)


def identity_problem(spec, config, node: NodeIdentities) -> str | None:
    """The first static address or MAC of the spec that belongs to this node, as a one-line message."""
    for i, ref in enumerate(spec.networks):
        if ref.mac and ref.mac.lower() in node.macs:
            return (f"networks[{i}].mac: {ref.mac} is the MAC of this node's interface "
                    f"{node.macs[ref.mac.lower()]}, not a VM's; pick another MAC or leave `mac` out")
        if ref.address and not config.networks[ref.network].trusted:
            ip = str(ipaddress.IPv4Interface(ref.address).ip)
            if ip in node.addresses:
                return (f"networks[{i}].address: {ip} is an address of the node itself (a router or the host, "
                        "not a VM); pick another address")
    return None


def check_node_identities(spec, config, read=None) -> None:
    """UserFault where the spec claims the node's own address or MAC; `read` gives the node's identities."""
    if not claims(spec):
        return
    if read is None:
        from .links import node_identities as read
    problem = identity_problem(spec, config, read())
    if problem is not None:
        raise UserFault(problem)
