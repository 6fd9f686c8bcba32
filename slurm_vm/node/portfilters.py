"""Which of a job's VM ports get anti-spoofing rules, and with what addresses (pure).

Joins the admin's per-network choices (`trusted`, `allow_dhcp_server`, `allow_router_advertisements`)
with the NICs and addresses of the plan; networks.portfilter turns the result into an nft ruleset.
"""

from __future__ import annotations

from ..config import Config
from ..networks.portfilter import PortFilter


def vxlan_ports(config: Config) -> tuple[int, ...]:
    """The node's VXLAN underlay ports: no guest sends to them (networks/underlay.py)."""
    return tuple(sorted({net.port for net in config.networks.values() if net.kind == "vxlan"}))


def plan_port_filters(nics: tuple, addresses: tuple[tuple[str, ...], ...], config: Config) -> tuple[PortFilter, ...]:
    """One PortFilter per NIC on an untrusted network. `addresses[i]` is what slurm-vm gave NIC i (a static
    `address` or automatic ones, IPv4 and IPv6; node/addresses.plan_addresses) or empty: then the port is
    held to its MAC only."""
    out = []
    for nic, address in zip(nics, addresses):
        net = config.networks[nic.network]
        if net.trusted:
            continue
        out.append(PortFilter(device=nic.ifname, hook="egress" if nic.kind == "macvtap" else "ingress",
                              mac=nic.mac, addresses=tuple(address) or None,
                              allow_dhcp_server=net.allow_dhcp_server,
                              allow_router_advertisements=net.allow_router_advertisements,
                              vxlan_ports=vxlan_ports(config)))
    return tuple(out)
