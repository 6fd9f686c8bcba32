"""Unicast VXLAN: head-end replication to exactly the job's nodes, and a filter for every other VTEP.

The VXLAN device has no multicast group and learning off; one all-zero-MAC FDB entry per other node of
the job sends broadcast, unknown unicast and multicast to each of them. Learning off keeps the kernel
from adding entries for senders, but it still *delivers* frames from any VTEP that knows the VNI, so an
nftables table `svmvx<VNI>` (inet family, input hook) drops VXLAN packets of the VNI whose source is not
one of the job's nodes. The table is made with the segment and deleted with it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .names import vxlan_device_name

TABLE_PREFIX = "svmvx"
ZERO_MAC = "00:00:00:00:00:00"


@dataclass(frozen=True)
class Unicast:
    local: str                    # this node's underlay address
    peers: tuple[str, ...]        # the job's other nodes' underlay addresses (same family as `local`)

    @property
    def ipv6(self) -> bool:
        return ipaddress.ip_address(self.local).version == 6


def table_name(vni: int) -> str:
    return f"{TABLE_PREFIX}{vni}"


def vtep_filter_script(vni: int, port: int, peers: tuple[str, ...]) -> str:
    """An nft script that atomically (re)creates the segment's table: only `peers` may send VNI `vni`."""
    table = table_name(vni)
    match = f"udp dport {int(port)} @th,96,24 {int(vni)}"
    v4 = [str(ipaddress.IPv4Address(p)) for p in peers if ipaddress.ip_address(p).version == 4]
    v6 = [str(ipaddress.IPv6Address(p)) for p in peers if ipaddress.ip_address(p).version == 6]
    rules = []
    if v4:
        rules.append(f"{match} ip saddr {{ {', '.join(v4)} }} accept")
    if v6:
        rules.append(f"{match} ip6 saddr {{ {', '.join(v6)} }} accept")
    rules.append(f"{match} counter drop")
    body = "".join(f"    {rule}\n" for rule in rules)
    return (f"add table inet {table}\ndelete table inet {table}\n"
            f"table inet {table} {{\n  chain vtep_input {{\n    type filter hook input priority -10; policy accept;\n"
            f"{body}  }}\n}}\n")


def apply_vtep_filter(vni: int, port: int, peers: tuple[str, ...]) -> None:
    from .nft import apply_script
    apply_script(vtep_filter_script(vni, port, peers), f"the VTEP filter of VXLAN segment {vni}")


def delete_vtep_filter(vni: int) -> None:
    """Idempotent: a missing table is fine."""
    from .nft import checked
    if table_name(vni) in list_vtep_tables():
        checked(["delete", "table", "inet", table_name(vni)])


def list_vtep_tables() -> set[str]:
    """Names of the inet tables slurm-vm made for segments (empty where nft is not installed)."""
    from .nft import list_tables
    return {n for n in list_tables("inet") if n.startswith(TABLE_PREFIX) and n[len(TABLE_PREFIX):].isdigit()}


def add_peer_entries(ipr, device_index: int, peers: tuple[str, ...]) -> None:
    """One all-zero-MAC FDB entry per peer: BUM traffic is replicated to exactly these VTEPs."""
    for peer in peers:
        ipr.fdb("append", ifindex=device_index, lladdr=ZERO_MAC, dst=peer)


def peer_entries(ipr, vni: int) -> list[str]:
    """Destinations of the segment device's all-zero-MAC FDB entries (for checks and the node doctor)."""
    found = ipr.link_lookup(ifname=vxlan_device_name(vni))
    if not found:
        return []
    out = []
    for entry in ipr.fdb("dump", ifindex=found[0]):
        if entry.get_attr("NDA_LLADDR") == ZERO_MAC and entry.get_attr("NDA_DST"):
            out.append(entry.get_attr("NDA_DST"))
    return sorted(out)


def vxlan_link_args(vni: int, parent_index: int, port: int, unicast: Unicast) -> dict:
    """netlink attributes of a unicast VXLAN device: no group, learning off, the local underlay address."""
    args = {"vxlan_id": vni, "vxlan_link": parent_index, "vxlan_port": port, "vxlan_learning": 0}
    args["vxlan_local6" if unicast.ipv6 else "vxlan_local"] = unicast.local
    return args
