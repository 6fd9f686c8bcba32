"""Cluster-wide allocation of job-private VNIs and VM addresses (pure: records, choice, conflicts).

A job's holding is recorded by root in the job's AdminComment (users cannot change it) as one
whitespace-free token, e.g. `svm-net=0.k.private:v5001,lan@0:a100-102`:

- `0`: the job's restart count (a requeued job records anew; its other nodes wait for the new record),
- `c` candidate (being checked), `k` committed (the job's nodes use it), `x` failed (none free),
- `NET:vVNI` a job-private segment, `NET@NIC:aOFFSETS` the host offsets of NIC `NIC` of the job's VMs,
  VM by VM (`3-5+9` is 3,4,5,9), `mNIC:HEX12` a static MAC from the spec, `iNIC:HEX8@DOMAIN` a static IPv4
  address from the spec on the L2 domain DOMAIN (`b<bridge>`, `m<parent>`, `v<vni>`: networks that share a
  bridge share its addresses, with or without `subnet`), `x.NET` the network that had nothing free.

The protocol that makes the choice race-free lives in slurm_vm/node/allocate.py; see docs/architecture.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import SlurmVmError

TOKEN = "svm-net="
CANDIDATE, COMMITTED, FAILED = "c", "k", "x"
_NAME = r"[a-z0-9]([a-z0-9_-]{0,30}[a-z0-9])?"
_VNI_ENTRY = re.compile(rf"({_NAME}):v([0-9]{{1,8}})")
_ADDR_ENTRY = re.compile(rf"({_NAME})@([0-7]):a([0-9+-]{{1,20000}})")
_MAC_ENTRY = re.compile(r"m([0-7]):([0-9a-f]{12})")
_IP_ENTRY = re.compile(r"i([0-7]):([0-9a-f]{8})@([bmv][A-Za-z0-9_.-]{1,16})")
MAX_RECORD = 60000


class RecordError(SlurmVmError):
    """A record that is not ours or is damaged: treated as holding nothing."""


@dataclass(frozen=True)
class Holding:
    """What one job holds: VNIs per job-private network, and host offsets per (network, NIC), VM by VM."""
    restart: int = 0
    state: str = CANDIDATE
    vnis: dict = field(default_factory=dict)          # network -> VNI
    offsets: dict = field(default_factory=dict)       # (network, nic index) -> tuple of offsets, VM i at [i]
    failed: str = ""                                  # FAILED: the network with nothing free
    macs: dict = field(default_factory=dict)          # nic index -> static MAC (48-bit int) from the spec
    ips: dict = field(default_factory=dict)           # nic index -> (domain, static IPv4 as int) from the spec

    def held_ips(self) -> set[tuple[str, int]]:
        return set() if self.state == FAILED else set(self.ips.values())

    def held_vnis(self) -> set[int]:
        return set() if self.state == FAILED else set(self.vnis.values())

    def held_macs(self) -> set[int]:
        return set() if self.state == FAILED else set(self.macs.values())

    def held_offsets(self, network: str) -> set[int]:
        if self.state == FAILED:
            return set()
        return {o for (net, _), offs in self.offsets.items() if net == network for o in offs}


# --- the token ------------------------------------------------------------------------------------------

def _compress(values: tuple[int, ...]) -> str:
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if j - i < 1 else f"{values[i]}-{values[j]}")
        i = j + 1
    return "+".join(parts)


def _expand(text: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in text.split("+"):
        first, _, last = part.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise RecordError(f"bad offsets {text!r}")
        low, high = int(first), int(last or first)
        if high < low or high - low > 1 << 16 or len(out) > 1 << 16:
            raise RecordError(f"bad offsets {text!r}")
        out.extend(range(low, high + 1))
    return tuple(out)


def format_holding(holding: Holding) -> str:
    entries = [f"{net}:v{vni}" for net, vni in sorted(holding.vnis.items())]
    entries += [f"{net}@{nic}:a{_compress(offs)}" for (net, nic), offs in sorted(holding.offsets.items())]
    entries += [f"m{nic}:{mac:012x}" for nic, mac in sorted(holding.macs.items())]
    entries += [f"i{nic}:{ip:08x}@{domain}" for nic, (domain, ip) in sorted(holding.ips.items())]
    if holding.state == FAILED:
        entries = [holding.failed or "-"]
    return f"{TOKEN}{holding.restart}.{holding.state}.{','.join(entries)}"


def parse_holding(admin_comment: str) -> Holding | None:
    """The holding in an AdminComment, or None where there is none (or it is damaged: then it holds nothing)."""
    tokens = [t for t in admin_comment.split() if t.startswith(TOKEN)]
    if len(tokens) != 1 or len(tokens[0]) > MAX_RECORD:
        return None
    try:
        return _parse_token(tokens[0][len(TOKEN):])
    except RecordError:
        return None


def _parse_token(body: str) -> Holding:
    restart, _, rest = body.partition(".")
    state, _, entries = rest.partition(".")
    if not restart.isdigit() or state not in (CANDIDATE, COMMITTED, FAILED):
        raise RecordError("bad header")
    if state == FAILED:
        return Holding(restart=int(restart), state=state, failed=entries)
    vnis: dict[str, int] = {}
    offsets: dict[tuple[str, int], tuple[int, ...]] = {}
    macs: dict[int, int] = {}
    ips: dict[int, tuple[str, int]] = {}
    for entry in filter(None, entries.split(",")):
        vni, addr, mac = _VNI_ENTRY.fullmatch(entry), _ADDR_ENTRY.fullmatch(entry), _MAC_ENTRY.fullmatch(entry)
        ip = _IP_ENTRY.fullmatch(entry)
        if ip:
            ips[int(ip.group(1))] = (ip.group(3), int(ip.group(2), 16))
        elif vni:
            vnis[vni.group(1)] = int(vni.group(3))
        elif addr:
            offsets[(addr.group(1), int(addr.group(3)))] = _expand(addr.group(4))
        elif mac:
            macs[int(mac.group(1))] = int(mac.group(2), 16)
        else:
            raise RecordError(f"bad entry {entry!r}")
    return Holding(restart=int(restart), state=state, vnis=vnis, offsets=offsets, macs=macs, ips=ips)


def with_holding(admin_comment: str, holding: Holding | None) -> str:
    """The AdminComment with our token replaced (or removed); the admins' own words are kept."""
    kept = [t for t in admin_comment.split() if not t.startswith(TOKEN)]
    if holding is not None:
        kept.append(format_holding(holding))
    return " ".join(kept)


# --- what a job needs, and the choice ---------------------------------------------------------------------

@dataclass(frozen=True)
class VniNeed:
    network: str
    first: int
    last: int


@dataclass(frozen=True)
class AddressNeed:
    network: str
    nic: int
    first: int                    # the range slurm-vm hands out (host offsets)
    last: int
    count: int                    # VMs
    static: int | None = None     # a spec's static address (count is 1 then)


@dataclass(frozen=True)
class MacNeed:
    """A spec's static MAC: no other running VM may use it, whether another spec's or one slurm-vm derived."""
    nic: int
    mac: int


@dataclass(frozen=True)
class IpNeed:
    """A spec's static address: no other running VM on the same L2 domain may use it, whatever its network."""
    nic: int
    domain: str
    ip: int


@dataclass(frozen=True)
class Needs:
    vnis: tuple[VniNeed, ...] = ()
    addresses: tuple[AddressNeed, ...] = ()
    macs: tuple[MacNeed, ...] = ()
    ips: tuple[IpNeed, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.vnis or self.addresses or self.macs or self.ips)


@dataclass(frozen=True)
class Taken:
    """What other running jobs hold, from their records."""
    vnis: dict = field(default_factory=dict)          # vni -> job id
    offsets: dict = field(default_factory=dict)       # (network, offset) -> job id
    macs: dict = field(default_factory=dict)          # static MAC -> job id
    ips: dict = field(default_factory=dict)           # (domain, static IPv4) -> job id
    live: frozenset = frozenset()                     # every other live job (derived MACs come from job ids)
    # Candidates of higher job ids: they yield to this job, so they cannot make its static MAC or address
    # taken (else two jobs wanting the same one would refuse each other). Firm holders win in the maps above.
    yielding: frozenset = frozenset()


def taken_by(records: dict[int, Holding], job_id: int, live: frozenset[int] = frozenset()) -> Taken:
    vnis: dict[int, int] = {}
    offsets: dict[tuple[str, int], int] = {}
    macs: dict[int, int] = {}
    ips: dict[tuple[str, int], int] = {}
    others = {other: h for other, h in records.items() if other != job_id and h.state != FAILED}
    yielding = frozenset(o for o, h in others.items() if h.state == CANDIDATE and o > job_id)
    for other, holding in sorted(others.items(), key=lambda item: (item[0] in yielding, item[0])):
        for vni in holding.held_vnis():
            vnis.setdefault(vni, other)
        for (net, _), offs in holding.offsets.items():
            for off in offs:
                offsets.setdefault((net, off), other)
        for mac in holding.held_macs():
            macs.setdefault(mac, other)
        for ip in holding.held_ips():
            ips.setdefault(ip, other)
    return Taken(vnis=vnis, offsets=offsets, macs=macs, ips=ips, live=live - {job_id}, yielding=yielding)


@dataclass(frozen=True)
class Shortage:
    """Nothing free: `network` and why (for the user)."""
    network: str
    message: str


@dataclass(frozen=True)
class StaticTaken:
    network: str
    nic: int
    offset: int
    job_id: int


@dataclass(frozen=True)
class MacTaken:
    nic: int
    mac: int
    job_id: int


@dataclass(frozen=True)
class IpTaken:
    nic: int
    ip: int
    job_id: int


def ip_holder(need: IpNeed, taken: Taken) -> IpTaken | None:
    holder = taken.ips.get((need.domain, need.ip))
    if holder is None or holder in taken.yielding:
        return None
    return IpTaken(need.nic, need.ip, holder)


def mac_holder(need: MacNeed, taken: Taken) -> MacTaken | None:
    """Another live job using the MAC: in its record (a static MAC), or as the job slurm-vm derives it for."""
    holder = taken.macs.get(need.mac)
    if holder in taken.yielding:
        holder = None
    if holder is None:
        derived = derived_mac_job(need.mac)
        holder = derived if derived in taken.live else None
    return MacTaken(need.nic, need.mac, holder) if holder is not None else None


def derived_mac_job(mac: int) -> int | None:
    """The job whose VMs slurm-vm would give this MAC (the inverse of names.derive_mac), or None."""
    if (mac >> 40) & 0x03 != 0x02:
        return None     # not locally administered unicast: never derived
    value = ((mac >> 42) << 40) | (mac & ((1 << 40) - 1))
    return value >> 14 or None


def choose(needs: Needs, taken: Taken, restart: int = 0) -> Holding | Shortage | StaticTaken | MacTaken | IpTaken:
    """The lowest free VNI of each range and the lowest free offsets, as a candidate holding."""
    held = _static_identity_held(needs, taken)
    if held is not None:
        return held
    vnis: dict[str, int] = {}
    used_vnis = set(taken.vnis)
    for need in needs.vnis:
        if need.network in vnis:
            continue
        free = next((v for v in range(need.first, need.last + 1) if v not in used_vnis), None)
        if free is None:
            size = need.last - need.first + 1
            return Shortage(need.network, f"all {size} job-private segments of network {need.network!r} "
                            f"(VNIs {need.first}-{need.last}) are in use by running jobs")
        vnis[need.network] = free
        used_vnis.add(free)
    offsets: dict[tuple[str, int], tuple[int, ...]] = {}
    used = set(taken.offsets)
    for need in needs.addresses:
        if need.static is not None:
            taken_static = static_holder(need, taken)
            if taken_static is not None:
                return taken_static
            offsets[(need.network, need.nic)] = (need.static,)
            used.add((need.network, need.static))
            continue
        picked = []
        for off in range(need.first, need.last + 1):
            if len(picked) == need.count:
                break
            if (need.network, off) not in used:
                picked.append(off)
        if len(picked) < need.count:
            return Shortage(need.network, f"network {need.network!r} has {need.count - len(picked)} address(es) too "
                            f"few free for {need.count} VM(s): the others are in use by running jobs")
        offsets[(need.network, need.nic)] = tuple(picked)
        used.update((need.network, o) for o in picked)
    return Holding(restart=restart, state=CANDIDATE, vnis=vnis, offsets=offsets,
                   macs={need.nic: need.mac for need in needs.macs},
                   ips={need.nic: (need.domain, need.ip) for need in needs.ips})


def _static_identity_held(needs: Needs, taken: Taken) -> MacTaken | IpTaken | None:
    for mac_need in needs.macs:
        mac_taken = mac_holder(mac_need, taken)
        if mac_taken is not None:
            return mac_taken
    for ip_need in needs.ips:
        ip_taken = ip_holder(ip_need, taken)
        if ip_taken is not None:
            return ip_taken
    return None


def conflicts(mine: Holding, records: dict[int, Holding], job_id: int) -> dict[int, list[str]]:
    """Other jobs whose records hold something of mine: job id -> what (e.g. `vni 5000`, `lan 10`)."""
    out: dict[int, list[str]] = {}
    my_offsets = {(net, off) for (net, _), offs in mine.offsets.items() for off in offs}
    for other, holding in sorted(records.items()):
        if other == job_id:
            continue
        what = [f"vni {v}" for v in sorted(mine.held_vnis() & holding.held_vnis())]
        what += [f"{net} {off}" for net, off in sorted(my_offsets)
                 if holding.state != FAILED and off in holding.held_offsets(net)]
        what += [f"mac {mac:012x}" for mac in sorted(mine.held_macs() & holding.held_macs())]
        what += [f"ip {ip:08x}@{domain}" for domain, ip in sorted(mine.held_ips() & holding.held_ips())]
        if what:
            out[other] = what
    return out


def static_holder(need: AddressNeed, taken: Taken) -> StaticTaken | None:
    holder = taken.offsets.get((need.network, need.static))
    if holder is None or holder in taken.yielding:
        return None
    return StaticTaken(need.network, need.nic, need.static, holder)  # type: ignore[arg-type]


def static_conflicts(needs: Needs, records: dict[int, Holding], job_id: int,
                     live: frozenset[int] = frozenset()) -> StaticTaken | MacTaken | IpTaken | None:
    """The first static MAC or address of `needs` that another live job holds (higher candidates yield)."""
    taken = taken_by(records, job_id, live)
    held = _static_identity_held(needs, taken)
    if held is not None:
        return held
    for need in needs.addresses:
        if need.static is not None:
            found = static_holder(need, taken)
            if found is not None:
                return found
    return None

def identity_domain(net) -> str | None:
    """The L2 domain whose addresses a network's VMs share (None: a job-private segment, or `trusted`)."""
    if net.trusted or (net.kind == "vxlan" and net.vni_range is not None):
        return None
    return {"bridge": f"b{net.bridge}", "macvtap": f"m{net.parent}", "vxlan": f"v{net.vni}"}[net.kind]
