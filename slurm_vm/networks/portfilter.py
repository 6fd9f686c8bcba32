"""Anti-spoofing on a job's VM ports, as an nftables JSON ruleset (pure: no system access here).

One `netdev` table per job, `svm_<jobid>`, with one base chain per filtered port. What a guest sends
enters the host on its port: a tap's *ingress* hook, a macvtap's *egress* hook (the guest's frames are
transmitted by the macvtap device onto its parent or to its sibling macvtaps). Every chain:

- drops frames whose Ethernet source is not the VM's MAC;
- lets through only ARP, IPv4 and IPv6 by EtherType (VLAN-tagged and other protocols are dropped);
- ARP: sender hardware address must be the VM's MAC; sender IP one of the VM's IPv4 addresses (or
  0.0.0.0, an RFC 5227 probe) where slurm-vm manages the VM's addresses;
- IPv4: source one of the VM's IPv4 addresses where managed; no DHCP server traffic unless allowed, recognised
  by what it is: UDP from port 67, UDP to the client port 68, or a BOOTREPLY (op 2) to port 67 (a relay);
- IPv6: source one of the VM's IPv6 addresses, link-local (fe80::/10) or :: (DAD) where managed; no DHCPv6
  server traffic unless allowed (UDP from 547, to the client port 546, or a server message type to 547);
  no router advertisements or redirects unless allowed; neighbour discovery held like ARP: a link-layer
  option (source or target) must carry the VM's MAC, and where managed an advertisement's target (and a
  duplicate address detection probe's) must be one of the VM's IPv6 addresses or link-local;
- UDP to the node's VXLAN ports (`vxlan_ports`): never, from any filtered port (networks/underlay.py).

`nft -j -f` applies the whole ruleset in one transaction (networks.nft is the executor).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

TABLE_PREFIX = "svm_"
FAMILY = "netdev"
PRIORITY = -500
HOOKS = ("ingress", "egress")


@dataclass(frozen=True)
class PortFilter:
    """What one VM port may send."""

    device: str                              # the tap or macvtap interface
    hook: str                                # ingress (tap) | egress (macvtap)
    mac: str
    addresses: tuple[str, ...] | None        # the VM's addresses (with or without prefix); None: not managed
    allow_dhcp_server: bool = False
    allow_router_advertisements: bool = False
    vxlan_ports: tuple[int, ...] = ()        # UDP ports of the node's VXLAN underlay: guests never send to them

    def __post_init__(self) -> None:
        if self.hook not in HOOKS:
            raise ValueError(f"hook must be one of {HOOKS}")

    @property
    def ipv4(self) -> list[str]:
        return _hosts(self.addresses or (), 4)

    @property
    def ipv6(self) -> list[str]:
        return _hosts(self.addresses or (), 6)


def _hosts(addresses: tuple[str, ...], version: int) -> list[str]:
    out = []
    for address in addresses:
        ip = ipaddress.ip_interface(address).ip
        if ip.version == version and str(ip) not in out:
            out.append(str(ip))
    return out


def table_name(job_id: int) -> str:
    return f"{TABLE_PREFIX}{job_id}"


def parse_table_name(name: str) -> int | None:
    """The job id of a table named by table_name, else None."""
    stem = name[len(TABLE_PREFIX):] if name.startswith(TABLE_PREFIX) else ""
    if not stem.isdigit() or stem != str(int(stem)) or not 1 <= int(stem) <= 4294967295:
        return None
    return int(stem)


def _payload(protocol: str, field: str) -> dict:
    return {"payload": {"protocol": protocol, "field": field}}


def _match(left: dict, right: object, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _set(items: list) -> object:
    return items[0] if len(items) == 1 and not isinstance(items[0], dict) else {"set": items}


DROP = {"drop": None}
ACCEPT = {"accept": None}


def _raw(offset: int, length: int) -> dict:
    return {"payload": {"base": "th", "offset": offset, "len": length}}


def _dhcp_rules() -> tuple[list[list[dict]], list[list[dict]]]:
    """DHCP/DHCPv6 server traffic by what it is, not only by its source port."""
    sport, dport = _payload("udp", "sport"), _payload("udp", "dport")
    ip4 = [[_match(sport, 67), DROP], [_match(dport, 68), DROP],
           [_match(dport, 67), _match(_raw(64, 8), 2), DROP]]                       # BOOTREPLY to a relay
    ip6 = [[_match(sport, 547), DROP], [_match(dport, 546), DROP],
           [_match(dport, 547), _match(_raw(64, 8), {"set": [2, 7, 10, 13]}), DROP]]  # ADVERTISE, REPLY, ...
    return ip4, ip6


def _nd_rules(port: PortFilter) -> list[list[dict]]:
    """Neighbour solicitations and advertisements (jumped to after the source address check)."""
    plen = _payload("ip6", "length")
    rules = [[_match(plen, 32, ">"), DROP],                                          # at most one option
             [_match(plen, 32), _match(_raw(192, 8), {"set": [1, 2]}),
              _match(_raw(208, 48), int(port.mac.replace(":", ""), 16), "!="), DROP],  # link-layer option: own MAC
             [_match(plen, 32), _match(_raw(192, 8), {"set": [1, 2, 14]}, "!="), DROP]]  # 14: DAD nonce
    if port.addresses is None:
        return rules + [[ACCEPT]]
    rules += [[_match(_payload("icmpv6", "type"), "nd-neighbor-solicit"), _match(_payload("ip6", "saddr"), "::", "!="),
               ACCEPT],                                                               # resolving anyone: fine
              [_match({"&": [_raw(64, 16), 0xFFC0]}, 0xFE80), ACCEPT]]                 # link-local target
    for address in port.ipv6:
        value = int(ipaddress.IPv6Address(address))
        rules.append([_match(_raw(64 + 32 * i, 32), (value >> (96 - 32 * i)) & 0xFFFFFFFF) for i in range(4)]
                     + [ACCEPT])
    return rules + [[DROP]]                                                           # a target not the VM's


def _chain_rules(port: PortFilter, name: str) -> dict[str, list[list[dict]]]:
    """Rules (lists of expressions) per chain; the base chain is `name`."""
    arp: list[list[dict]] = [[_match(_payload("arp", "saddr ether"), port.mac, "!="), DROP]]
    ip4: list[list[dict]] = []
    ip6: list[list[dict]] = []
    if port.vxlan_ports:
        vxlan = _match(_payload("udp", "dport"), _set(list(port.vxlan_ports)))
        ip4.append([vxlan, DROP])
        ip6.append([vxlan, DROP])
    if not port.allow_dhcp_server:
        dhcp4, dhcp6 = _dhcp_rules()
        ip4 += dhcp4
        ip6 += dhcp6
    if not port.allow_router_advertisements:
        ip6.append([_match(_payload("icmpv6", "type"), {"set": ["nd-router-advert", "nd-redirect"]}), DROP])
    if port.addresses is not None:
        arp.append([_match(_payload("arp", "saddr ip"), _set(["0.0.0.0", *port.ipv4]), "!="), DROP])
        ip4.append([_match(_payload("ip", "saddr"), _set(port.ipv4), "!="), DROP] if port.ipv4 else [DROP])
        ip6.append([_match(_payload("ip6", "saddr"),
                           {"set": ["::", {"prefix": {"addr": "fe80::", "len": 10}}, *port.ipv6]}, "!="), DROP])
    ip6.append([_match(_payload("icmpv6", "type"), {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}),
                {"jump": {"target": f"{name}_nd"}}])
    for rules in (arp, ip4, ip6):
        rules.append([ACCEPT])
    base = [
        [_match(_payload("ether", "saddr"), port.mac, "!="), DROP],
        [{"vmap": {"key": _payload("ether", "type"),
                   "data": {"set": [["arp", {"jump": {"target": f"{name}_arp"}}],
                                    ["ip", {"jump": {"target": f"{name}_ip4"}}],
                                    ["ip6", {"jump": {"target": f"{name}_ip6"}}]]}}}],
    ]
    return {f"{name}_arp": arp, f"{name}_ip4": ip4, f"{name}_nd": _nd_rules(port), f"{name}_ip6": ip6, name: base}


def ruleset(job_id: int, ports: tuple[PortFilter, ...] | list[PortFilter]) -> dict:
    """The job's whole table, replacing a stale one of the same name, as one nft JSON transaction."""
    table = table_name(job_id)
    where = {"family": FAMILY, "table": table}
    commands: list[dict] = [{"add": {"table": {"family": FAMILY, "name": table}}},
                            {"delete": {"table": {"family": FAMILY, "name": table}}},
                            {"add": {"table": {"family": FAMILY, "name": table}}}]
    rules: list[dict] = []
    for i, port in enumerate(ports):
        name = f"p{i}"
        chains = _chain_rules(port, name)
        for chain in chains:
            spec = dict(where, name=chain)
            if chain == name:
                spec.update(type="filter", hook=port.hook, dev=port.device, prio=PRIORITY, policy="drop")
            commands.append({"add": {"chain": spec}})
        rules += [{"add": {"rule": dict(where, chain=chain, expr=expr)}}
                  for chain, chain_rules in chains.items() for expr in chain_rules]
    return {"nftables": commands + rules}


def delete_table(job_id: int) -> dict:
    """Delete the job's table; adding it first makes the transaction succeed when it is already gone."""
    spec = {"family": FAMILY, "name": table_name(job_id)}
    return {"nftables": [{"add": {"table": spec}}, {"delete": {"table": spec}}]}
