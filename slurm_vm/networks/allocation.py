"""Cluster-wide allocation of job-private VNIs and VM addresses (pure: records, choice, conflicts).

A job's holding is recorded by root in the job's AdminComment (users cannot change it) as one
whitespace-free token, e.g. `svm-net=0.k.private:v5001,lan@0:a100-102`:

- `0`: the job's restart count (a requeued job records anew; its other nodes wait for the new record),
- `c` candidate (being checked), `k` committed (the job's nodes use it), `x` failed (none free),
- `NET:vVNI` a job-private segment, `NET@NIC:aOFFSETS` the host offsets of NIC `NIC` of the job's VMs,
  VM by VM (`3-5+9` is 3,4,5,9), `x.NET` the network that had nothing free.

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

    def held_vnis(self) -> set[int]:
        return set() if self.state == FAILED else set(self.vnis.values())

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
    for entry in filter(None, entries.split(",")):
        vni, addr = _VNI_ENTRY.fullmatch(entry), _ADDR_ENTRY.fullmatch(entry)
        if vni:
            vnis[vni.group(1)] = int(vni.group(3))
        elif addr:
            offsets[(addr.group(1), int(addr.group(3)))] = _expand(addr.group(4))
        else:
            raise RecordError(f"bad entry {entry!r}")
    return Holding(restart=int(restart), state=state, vnis=vnis, offsets=offsets)


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
class Needs:
    vnis: tuple[VniNeed, ...] = ()
    addresses: tuple[AddressNeed, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.vnis or self.addresses)


@dataclass(frozen=True)
class Taken:
    """What other running jobs hold, from their records."""
    vnis: dict = field(default_factory=dict)          # vni -> job id
    offsets: dict = field(default_factory=dict)       # (network, offset) -> job id


def taken_by(records: dict[int, Holding], job_id: int) -> Taken:
    vnis: dict[int, int] = {}
    offsets: dict[tuple[str, int], int] = {}
    for other, holding in sorted(records.items()):
        if other == job_id or holding.state == FAILED:
            continue
        for vni in holding.held_vnis():
            vnis.setdefault(vni, other)
        for (net, _), offs in holding.offsets.items():
            for off in offs:
                offsets.setdefault((net, off), other)
    return Taken(vnis=vnis, offsets=offsets)


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


def choose(needs: Needs, taken: Taken, restart: int = 0) -> Holding | Shortage | StaticTaken:
    """The lowest free VNI of each range and the lowest free offsets, as a candidate holding."""
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
            holder = taken.offsets.get((need.network, need.static))
            if holder is not None:
                return StaticTaken(need.network, need.nic, need.static, holder)
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
    return Holding(restart=restart, state=CANDIDATE, vnis=vnis, offsets=offsets)


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
        if what:
            out[other] = what
    return out


def static_conflicts(needs: Needs, records: dict[int, Holding], job_id: int) -> StaticTaken | None:
    """The first static address of `needs` that another job's record holds."""
    for need in needs.addresses:
        if need.static is None:
            continue
        for other, holding in sorted(records.items()):
            if other != job_id and need.static in holding.held_offsets(need.network):
                return StaticTaken(need.network, need.nic, need.static, other)
    return None
