"""The VXLAN underlay belongs to root: no unprivileged process on a node receives or sends VXLAN traffic.

- *Receive*: the kernel's VXLAN socket of a UDP port binds the wildcard address without SO_REUSEADDR or
  SO_REUSEPORT, so while it exists nobody else can bind that port, on any address. One permanent
  root-owned *guard* device per port and address family (`svmgd4-<port>`, `svmgd6-<port>`: VXLAN, UP,
  the reserved VNI GUARD_VNI, no remote, no group) keeps the socket open even when no segment runs.
  Segment devices share its socket (their receive flags are the kernel defaults, like the guard's).
- *Send*: the nftables table `inet svm_underlay` drops UDP to the VXLAN ports from sockets whose owner is
  not root (`meta skuid`), and UDP to the VXLAN ports that arrives from VM-facing interfaces (slurm-vm's
  taps and segment bridges, the admin bridges of `bridge` networks) for the node or to be forwarded.
  A guest's frame can keep the socket of its tap (the job user's: tun allocates the frame on the tap's
  socket) through the bridge into the segment device's encapsulation, so skuid alone would drop a VM's
  segment traffic. The table `bridge svm_underlay` therefore marks frames the bridge forwards into a
  segment device (`svmvx*`) with UNDERLAY_MARK; the output chain lets marked packets pass and clears the
  bit. Users cannot set a mark (SO_MARK needs CAP_NET_ADMIN), and the only way into that chain is a
  bridge port: the segment's own encapsulation.

`slurm-vm node setup` makes both at boot; the prolog of every VXLAN job re-makes what is missing.
Pure parts first (names, the ruleset, /proc/net/udp parsing), then the executors.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from ..errors import NodeError, UserFault
from ..limits import GUARD_VNI   # 16777215: configs may not use it

TABLE = "svm_underlay"
FAMILY = "inet"
BRIDGE_FAMILY = "bridge"
SEGMENT_DEVICES = "svmvx*"      # links.ensure_vxlan_segment's VXLAN devices
# One bit of the packet mark: "a bridge forwarded this frame into a segment device". The segment device's
# route lookup sees it (admins' fwmark rules must not use this bit); the output chain clears it.
UNDERLAY_MARK = 0x10000000
VM_PREFIXES = ("svm",)          # taps svm<job>n<i>, segment bridges svmbr<vni> and devices svmvx<vni>
PROC_UDP = {4: "/proc/net/udp", 6: "/proc/net/udp6"}


class PortHeld(UserFault):
    """Another process holds a VXLAN port, so the guard cannot take it: a user's doing, so the job fails and the
    node stays in service (`node doctor` reports it)."""


@dataclass(frozen=True)
class UnderlayPlan:
    ports: tuple[int, ...]                 # every VXLAN port of the config
    vm_bridges: tuple[str, ...] = ()       # admin bridges of `bridge` networks (VM-facing)


def plan_underlay(config) -> UnderlayPlan | None:
    """From the admin config (duck-typed): None where no network is VXLAN."""
    ports = sorted({net.port for net in config.networks.values() if net.kind == "vxlan"})
    if not ports:
        return None
    bridges = sorted({net.bridge for net in config.networks.values() if net.kind == "bridge" and net.bridge})
    return UnderlayPlan(tuple(ports), tuple(bridges))


def guard_name(port: int, family: int) -> str:
    return f"svmgd{family}-{int(port)}"


def _match(left: dict, right: object, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _ports(ports: tuple[int, ...]) -> object:
    return ports[0] if len(ports) == 1 else {"set": list(ports)}


def _mark() -> dict:
    return {"meta": {"key": "mark"}}


def _set_mark(value: dict) -> dict:
    return {"mangle": {"key": _mark(), "value": value}}


def ruleset(plan: UnderlayPlan) -> dict:
    """The node's underlay tables as one nft JSON transaction (replaces older ones atomically)."""
    where = {"family": FAMILY, "table": TABLE}
    dport = _match({"payload": {"protocol": "udp", "field": "dport"}}, _ports(plan.ports))
    l4 = _match({"meta": {"key": "l4proto"}}, "udp")
    commands: list[dict] = []
    for family in (FAMILY, BRIDGE_FAMILY):
        commands += [{"add": {"table": {"family": family, "name": TABLE}}},
                     {"delete": {"table": {"family": family, "name": TABLE}}},
                     {"add": {"table": {"family": family, "name": TABLE}}}]
    commands.append({"add": {"chain": {"family": BRIDGE_FAMILY, "table": TABLE, "name": "forward",
                                       "type": "filter", "hook": "forward", "prio": -5, "policy": "accept"}}})
    commands.append({"add": {"rule": {"family": BRIDGE_FAMILY, "table": TABLE, "chain": "forward", "expr": [
        _match({"meta": {"key": "oifname"}}, SEGMENT_DEVICES),
        _set_mark({"|": [_mark(), UNDERLAY_MARK]})]}}})
    rules: list[list[dict]] = []
    for hook in ("output", "input", "forward"):
        commands.append({"add": {"chain": dict(where, name=hook, type="filter", hook=hook, prio=-5,
                                               policy="accept")}})
    marked = _match({"&": [_mark(), UNDERLAY_MARK]}, UNDERLAY_MARK)
    rules.append(["output", l4, dport, marked, _set_mark({"&": [_mark(), 0xFFFFFFFF ^ UNDERLAY_MARK]}),
                  {"accept": None}])
    rules.append(["output", l4, dport, _match({"meta": {"key": "skuid"}}, 0, "!="), {"counter": None},
                  {"drop": None}])
    faces = [f"{p}*" for p in VM_PREFIXES] + list(plan.vm_bridges)
    for hook in ("input", "forward"):
        for face in faces:
            rules.append([hook, _match({"meta": {"key": "iifname"}}, face), l4, dport, {"counter": None},
                          {"drop": None}])
    commands += [{"add": {"rule": dict(where, chain=r[0], expr=r[1:])}} for r in rules]
    return {"nftables": commands}


@dataclass(frozen=True)
class Holder:
    family: int
    uid: int
    inode: int


def parse_proc_udp(text: str, port: int, family: int) -> list[Holder]:
    """Sockets bound to local `port` in a /proc/net/udp{,6} table (its fixed columns; no tool output)."""
    out = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10 or ":" not in cols[1]:
            continue
        try:
            local_port = int(cols[1].rsplit(":", 1)[1], 16)
            uid, inode = int(cols[7]), int(cols[9])
        except ValueError:
            continue
        if local_port == port:
            out.append(Holder(family, uid, inode))
    return out


def port_holders(port: int) -> list[Holder]:
    """Every socket bound to the UDP port, both families (the kernel's VXLAN sockets show uid 0)."""
    out: list[Holder] = []
    for family, path in PROC_UDP.items():
        try:
            with open(path, encoding="ascii", errors="replace") as fh:
                out += parse_proc_udp(fh.read(), port, family)
        except FileNotFoundError:
            continue
    return out


def held_message(port: int, holders: list[Holder]) -> str:
    users = sorted({h.uid for h in holders if h.uid != 0})
    who = f"a process of uid {', '.join(map(str, users))}" if users else "a process"
    return (f"UDP port {port} (VXLAN) on this node is held by {who}, so slurm-vm cannot keep the port to root; "
            f"the node's admin must stop it and run `slurm-vm node setup` (run it at boot, before users can log in)")


# --- executors (netlink, nft) -------------------------------------------------------------------------------

def _ipv6_enabled() -> bool:
    try:
        with open(PROC_UDP[6], "rb"):
            return True
    except FileNotFoundError:
        return False


def guard_families() -> tuple[int, ...]:
    return (4, 6) if _ipv6_enabled() else (4,)


def ensure_guards(ports: tuple[int, ...]) -> list[str]:
    """Make every missing guard device and bring every guard up; the names made or brought up."""
    from .links import _ipr, _netlink_error
    NetlinkError = _netlink_error()
    done: list[str] = []
    with _ipr() as ipr:
        for port in ports:
            for family in guard_families():
                name = guard_name(port, family)
                try:
                    if _ensure_guard(ipr, name, port, family):
                        done.append(name)
                except NetlinkError as exc:
                    if exc.code == errno.EADDRINUSE:
                        raise PortHeld(held_message(port, port_holders(port))) from None
                    raise NodeError(f"cannot make the VXLAN guard device {name}: {exc.args[-1] if exc.args else exc}") \
                        from None
    return done


def _ensure_guard(ipr, name: str, port: int, family: int) -> bool:
    found = ipr.link_lookup(ifname=name)
    if found:
        link = ipr.get_links(found[0])[0]
        if guard_state(link, port) == "up":
            return False
        if guard_state(link, port) == "wrong":
            ipr.link("del", index=found[0])
            found = []
    if not found:
        args = {"vxlan_id": GUARD_VNI, "vxlan_port": port}
        if family == 6:
            args["vxlan_local6"] = "::1"
        ipr.link("add", ifname=name, kind="vxlan", **args)
        found = ipr.link_lookup(ifname=name)
    ipr.link("set", index=found[0], state="up")
    return True


def guard_state(link, port: int) -> str:
    """`up`, `down` or `wrong` (not a guard of `port`: replaced)."""
    info = link.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan" or data is None:
        return "wrong"
    if data.get_attr("IFLA_VXLAN_ID") != GUARD_VNI or data.get_attr("IFLA_VXLAN_PORT") != port:
        return "wrong"
    return "up" if link["flags"] & 1 else "down"


def apply_rules(plan: UnderlayPlan) -> None:
    from .nft import apply_ruleset
    apply_ruleset(ruleset(plan), f"the VXLAN underlay rules ({TABLE})")


def ensure_underlay(plan: UnderlayPlan) -> None:
    """What `node setup` and the prolog do: the guards, then the rules."""
    ensure_guards(plan.ports)
    apply_rules(plan)


def rules_in_place(plan: UnderlayPlan) -> bool:
    """The node's tables have the chains and rules `plan` makes (compared as nft prints them back)."""
    from .nft import list_table_rules
    wanted = [r["add"]["rule"] for r in ruleset(plan)["nftables"] if "rule" in r.get("add", {})]
    for family in (FAMILY, BRIDGE_FAMILY):
        rules = list_table_rules(family, TABLE)
        mine = [w for w in wanted if w["family"] == family]
        if rules is None or len(rules) != len(mine) or any(r.get("chain") != w["chain"]
                                                          for r, w in zip(rules, mine)):
            return False
    return True


def problems(plan: UnderlayPlan) -> list[str]:
    """What `node doctor` reports: a guard missing or down, a port held by another process, no rules."""
    from .links import _ipr
    out: list[str] = []
    with _ipr() as ipr:
        for port in plan.ports:
            bad = []
            for family in guard_families():
                found = ipr.link_lookup(ifname=guard_name(port, family))
                state = guard_state(ipr.get_links(found[0])[0], port) if found else "missing"
                if state != "up":
                    bad.append(f"{guard_name(port, family)} {state}")
            users = [h for h in port_holders(port) if h.uid != 0]
            if users:
                out.append(held_message(port, users))
            elif bad:
                out.append(f"VXLAN guard {', '.join(bad)}: users could bind UDP port {port}; run `slurm-vm node setup`")
    if not rules_in_place(plan):
        out.append(f"the VXLAN underlay rules (nftables tables {FAMILY} and {BRIDGE_FAMILY} {TABLE}) are missing or differ: users could "
                   "send VXLAN; run `slurm-vm node setup`")
    return out
