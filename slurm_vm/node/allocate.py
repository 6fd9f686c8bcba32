"""Agreeing on a job's private VNIs and VM addresses cluster-wide, through the job's AdminComment.

The job's first node chooses under a node-local lock, records a candidate, re-reads every live job's
record and commits only after a read that shows no other job holding what it chose (see
docs/architecture.md, "Cluster-wide allocation", for why no two live jobs can commit the same VNI or
address). The job's other nodes wait, bounded, for the committed record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

from ..networks.allocation import (COMMITTED, FAILED, AddressNeed, Holding, IpNeed, IpTaken, MacNeed, MacTaken, Needs,
                                   Shortage, StaticTaken, VniNeed, choose, conflicts, identity_domain, parse_holding,
                                   static_conflicts, taken_by, with_holding)
from ..errors import UserFault
from ..slurm.cli import JobRecord
from ..slurm.states import LIVE_STATES   # the jobs whose records hold VNIs/addresses

LOCK_NAME = "allocation.lock"
POLL_SECONDS = 1.0
MAX_POLL_SECONDS = 3.0
SHORTAGE_POLL_SECONDS = 3.0
OTHER_NODES_EXTRA_SECONDS = 20   # allocation_timeout (<= 60) + this stays inside the prolog's 90 s limit


class RecordStore(Protocol):
    """Slurm's job records as slurm-vm needs them (slurmctld serialises reads and writes)."""

    def records(self) -> list[JobRecord]: ...

    def admin_comment(self, job_id: int) -> str | None: ...

    def write(self, job_id: int, text: str) -> None: ...


@dataclass
class SlurmRecords:
    """RecordStore over the Slurm CLI: `squeue -O ...admin_comment` and `scontrol update AdminComment=`."""
    backend: object

    def records(self) -> list[JobRecord]:
        from ..slurm.cli import job_records
        return job_records(self.backend)

    def admin_comment(self, job_id: int) -> str | None:
        from ..slurm.cli import job_records
        found = [r for r in job_records(self.backend, (job_id,)) if r.job_id == job_id]
        return found[0].admin_comment if found else None

    def write(self, job_id: int, text: str) -> None:
        from ..slurm.cli import set_admin_comment
        set_admin_comment(self.backend, job_id, text)


def needs_of(spec, config) -> Needs:
    """What the job must agree on cluster-wide: VNIs of job-private segments, addresses on shared subnets, and
    the spec's static MACs."""
    from ..networks.addresses import network_address_plan
    vnis, addresses = [], []
    macs = [MacNeed(i, int(ref.mac.replace(":", ""), 16)) for i, ref in enumerate(spec.networks) if ref.mac]
    for i, ref in enumerate(spec.networks):
        net = config.networks[ref.network]
        if net.kind == "vxlan" and net.vni_range is not None:
            vnis.append(VniNeed(ref.network, net.vni_range[0], net.vni_range[1]))
        elif net.subnet is not None:
            plan = network_address_plan(net)
            static = plan.offset_of(ref.address) if ref.address else None
            addresses.append(AddressNeed(ref.network, i, plan.first, plan.last, spec.count, static))
    return Needs(vnis=tuple(vnis), addresses=tuple(addresses), macs=tuple(macs), ips=ip_needs(spec, config))




def ip_needs(spec, config) -> tuple[IpNeed, ...]:
    """The spec's static addresses on shared, untrusted networks: held cluster-wide, one running VM each."""
    import ipaddress
    out = []
    for i, ref in enumerate(spec.networks):
        domain = identity_domain(config.networks[ref.network]) if ref.address else None
        if domain is not None:
            out.append(IpNeed(i, domain, int(ipaddress.IPv4Interface(ref.address).ip)))
    return tuple(out)


@contextlib.contextmanager
def _node_lock(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class Allocator:
    store: RecordStore
    job_id: int
    user: str
    restart: int
    locks_dir: str
    timeout: float
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    _users: dict = field(default_factory=dict)
    _live: frozenset = frozenset()
    _written: bool = False

    # --- the job's first node ----------------------------------------------------------------------------

    def first_node(self, needs: Needs) -> Holding:
        deadline = self.clock() + self.timeout
        base = self.store.admin_comment(self.job_id) or ""
        while True:
            with _node_lock(os.path.join(self.locks_dir, LOCK_NAME)):
                result = self._attempt(needs, base)
            if isinstance(result, Holding):
                return result
            if isinstance(result, (StaticTaken, MacTaken, IpTaken)):
                failed = result.network if isinstance(result, StaticTaken) else "-"
                self._write(base, Holding(restart=self.restart, state=FAILED, failed=failed))
                raise UserFault(self._static_message(result))
            if isinstance(result, Shortage):
                if self._written:
                    self._write(base, None)   # hold nothing while waiting
                if self.clock() >= deadline:
                    self._write(base, Holding(restart=self.restart, state=FAILED, failed=result.network))
                    raise UserFault(f"{result.message}; waited {int(self.timeout)}s: try again later, or ask "
                                    "the admins for a larger range")
                self.sleep(SHORTAGE_POLL_SECONDS)
            elif self.clock() >= deadline:   # lost every race until the deadline
                self._write(base, Holding(restart=self.restart, state=FAILED, failed="-"))
                raise UserFault(f"could not agree on network resources with concurrent jobs within "
                                f"{int(self.timeout)}s: requeue the job")

    def _attempt(self, needs: Needs, base: str) -> Holding | Shortage | StaticTaken | MacTaken | IpTaken | None:
        """One round: choose, record a candidate, re-read; the holding once committed, else why not (None: lost
        a race, choose again)."""
        others = self._others()
        choice = choose(needs, taken_by(others, self.job_id, self._live), self.restart)
        if not isinstance(choice, Holding):
            return choice
        self._write(base, choice)
        for look in range(2):
            others = self._others()
            static = static_conflicts(needs, others, self.job_id, self._live)
            if static is not None:
                return static
            clash = conflicts(choice, others, self.job_id)
            if not clash:
                committed = dataclasses.replace(choice, state=COMMITTED)
                self._write(base, committed)
                return committed
            if look == 1 or any(other < self.job_id for other in clash):
                return None   # the higher job id yields; the lower one yields too if the clash stays
            self.sleep(self.rng.uniform(0.3, 1.2))
        return None

    def _others(self) -> dict[int, Holding]:
        out = {}
        live = set()
        for record in self.store.records():
            if record.job_id == self.job_id or record.state not in LIVE_STATES:
                continue
            live.add(record.job_id)
            holding = parse_holding(record.admin_comment)
            if holding is not None:
                out[record.job_id] = holding
            self._users[record.job_id] = record.user
        self._live = frozenset(live)
        return out

    def _write(self, base: str, holding: Holding | None) -> None:
        self.store.write(self.job_id, with_holding(base, holding))
        self._written = True

    def _static_message(self, taken: StaticTaken | MacTaken | IpTaken) -> str:
        owner = f" (your job {taken.job_id})" if self._users.get(taken.job_id) == self.user else ""
        if isinstance(taken, IpTaken):
            import ipaddress
            return (f"networks[{taken.nic}].address: {ipaddress.IPv4Address(taken.ip)} is in use by another running "
                    f"VM{owner}; pick another address or leave `address` out")
        if isinstance(taken, MacTaken):
            mac = ":".join(f"{(taken.mac >> s) & 0xFF:02x}" for s in range(40, -8, -8))
            return (f"networks[{taken.nic}].mac: {mac} is in use by another running VM{owner} (a spec's or one "
                    f"slurm-vm gives); pick another MAC or leave `mac` out")
        return (f"networks[{taken.nic}].address: host {taken.offset} of network {taken.network!r} is in use by "
                f"another running VM{owner}; pick another address or leave `address` out")

    # --- the job's other nodes ---------------------------------------------------------------------------

    def other_node(self, first: str) -> Holding:
        deadline = self.clock() + self.timeout + OTHER_NODES_EXTRA_SECONDS
        pause = POLL_SECONDS / 2
        while True:
            holding = parse_holding(self.store.admin_comment(self.job_id) or "")
            if holding is not None and holding.restart == self.restart:
                if holding.state == COMMITTED:
                    return holding
                if holding.state == FAILED:
                    raise UserFault(f"the job's first node {first} found no free job-private segment or address "
                                    f"(network {holding.failed!r}); see its reason in the job's output")
            if self.clock() >= deadline:
                raise UserFault(f"the job's first node {first} did not record its VNI/address choice within "
                                f"{int(self.timeout) + OTHER_NODES_EXTRA_SECONDS}s")
            self.sleep(pause)
            pause = min(pause * 1.5, MAX_POLL_SECONDS)   # a large job's nodes must not flood slurmctld


def allocate_for_job(spec, config, ctx, state_dir: str) -> Holding | None:
    """The job's agreed holding, or None when it needs nothing cluster-wide."""
    from ..slurm.cli import CliBackend
    from .layout import locks_dir
    needs = needs_of(spec, config)
    if not needs:
        return None
    store = SlurmRecords(CliBackend(config.slurm.command_timeout, config.slurm.bin_dir))
    allocator = Allocator(store, ctx.job_id, ctx.user, ctx.restart_count, locks_dir(state_dir),
                          config.allocation_timeout)
    first = ctx.nodes[0] if ctx.nodes else ctx.node
    return allocator.first_node(needs) if first == ctx.node else allocator.other_node(first)
