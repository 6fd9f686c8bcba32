"""Cluster-wide VNI/address allocation: the record format, the choice, and the protocol under concurrency.

The protocol test runs many jobs' first-node prologs as threads against an in-memory record store that,
like slurmctld, serialises every read and write (each behind a random delay); each thread has its own
node lock directory, as jobs on different nodes do. The real Slurm path is covered by
tests/e2e/test_private_networks.py.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurm_vm.limits import MAX_JOB_ID
from slurm_vm.networks.allocation import (COMMITTED, FAILED, AddressNeed, Holding, MacNeed, Needs, Shortage,
                                          StaticTaken, Taken, VniNeed, choose, conflicts, derived_mac_job,
                                          format_holding, parse_holding, taken_by, with_holding)
from slurm_vm.networks.names import derive_mac
from slurm_vm.node.allocate import Allocator
from slurm_vm.errors import UserFault
from slurm_vm.slurm.cli import JobRecord, parse_record_lines

US = "\x1f"


def test_record_round_trip_and_compression():
    h = Holding(restart=2, state=COMMITTED, vnis={"private": 5001},
                offsets={("lan", 0): (100, 101, 102, 105), ("lan", 3): (7,)})
    text = format_holding(h)
    assert text == "svm-net=2.k.private:v5001,lan@0:a100-102+105,lan@3:a7"
    assert parse_holding("admin note " + text + " more") == h


@pytest.mark.parametrize("text", ["", "svm-net=", "svm-net=x.k.", "svm-net=0.q.", "svm-net=0.k.BAD:v1",
                                  "svm-net=0.k.lan@9:a1", "svm-net=0.k.lan@0:a5-2", "svm-net=0.k.a:v1 svm-net=0.k.b:v2",
                                  "svm-net=0.k.lan@0:a1-99999999"])
def test_damaged_records_hold_nothing(text):
    assert parse_holding(text) is None


def test_admin_words_are_kept():
    h = Holding(vnis={"p": 5})
    assert with_holding("ticket-42 svm-net=0.c.p:v9", h) == "ticket-42 svm-net=0.c.p:v5"
    assert with_holding("ticket-42 svm-net=0.c.p:v9", None) == "ticket-42"


def test_failed_record():
    h = parse_holding(format_holding(Holding(restart=1, state=FAILED, failed="private")))
    assert (h.state, h.failed, h.held_vnis()) == (FAILED, "private", set())


def test_squeue_record_lines():
    text = f"12{US}RUNNING{US}alice{US}svm-net=0.k.p:v5 x|y{US}\n13{US}PENDING{US}bob{US}(null){US}\njunk\n"
    assert parse_record_lines(text) == [JobRecord(12, "RUNNING", "alice", "svm-net=0.k.p:v5 x|y"),
                                        JobRecord(13, "PENDING", "bob", "")]


def test_choice_takes_the_lowest_free():
    needs = Needs(vnis=(VniNeed("p", 10, 12),), addresses=(AddressNeed("lan", 0, 5, 9, 2),))
    taken = Taken(vnis={10: 1}, offsets={("lan", 5): 1, ("lan", 7): 2})
    h = choose(needs, taken)
    assert h.vnis == {"p": 11} and h.offsets == {("lan", 0): (6, 8)}


def test_exhausted_and_static_taken():
    assert isinstance(choose(Needs(vnis=(VniNeed("p", 10, 11),)), Taken(vnis={10: 1, 11: 2})), Shortage)
    assert isinstance(choose(Needs(addresses=(AddressNeed("lan", 0, 5, 6, 3),)), Taken()), Shortage)
    static = choose(Needs(addresses=(AddressNeed("lan", 1, 5, 9, 1, static=3),)), Taken(offsets={("lan", 3): 8}))
    assert static == StaticTaken("lan", 1, 3, 8)


@given(st.dictionaries(st.integers(1, 50), st.sets(st.integers(100, 110), max_size=3), max_size=8),
       st.integers(51, 60))
@settings(max_examples=200)
def test_a_choice_never_holds_what_others_hold(held, me):
    records = {job: Holding(vnis={f"n{i}": v for i, v in enumerate(sorted(vnis))}) for job, vnis in held.items()}
    needs = Needs(vnis=(VniNeed("a", 100, 110), VniNeed("b", 100, 110)))
    choice = choose(needs, taken_by(records, me))
    if isinstance(choice, Holding):
        assert not conflicts(choice, records, me)
        assert len(set(choice.vnis.values())) == 2
    else:
        assert len(set().union(*held.values()) if held else set()) >= 10


# --- the protocol under concurrency --------------------------------------------------------------------

@dataclass
class MemoryStore:
    """Like slurmctld: one lock serialises reads and writes; each call takes a random while."""
    comments: dict = field(default_factory=dict)
    states: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def _delay(self) -> None:
        time.sleep(self.rng.uniform(0, 0.004))

    def records(self) -> list[JobRecord]:
        self._delay()
        with self.lock:
            return [JobRecord(j, self.states.get(j, "RUNNING"), f"user{j % 3}", c) for j, c in self.comments.items()]

    def admin_comment(self, job_id: int) -> str | None:
        self._delay()
        with self.lock:
            return self.comments.get(job_id, "")

    def write(self, job_id: int, text: str) -> None:
        self._delay()
        with self.lock:
            self.comments[job_id] = text


def _run_jobs(store: MemoryStore, jobs: list[int], needs: Needs, timeout: float = 3.0) -> dict:
    results: dict = {}

    def run(job: int) -> None:
        with tempfile.TemporaryDirectory() as locks:   # each job's first node is a different node
            alloc = Allocator(store, job, f"user{job % 3}", 0, locks, timeout, sleep=lambda s: time.sleep(s / 20),
                              rng=random.Random(job))
            try:
                results[job] = alloc.first_node(needs)
            except UserFault as exc:
                results[job] = exc
    threads = [threading.Thread(target=run, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.mark.parametrize("seed", range(5))
def test_concurrent_first_nodes_never_share(seed):
    store = MemoryStore(rng=random.Random(seed))
    needs = Needs(vnis=(VniNeed("p", 5000, 5003),), addresses=(AddressNeed("lan", 0, 10, 40, 3),))
    results = _run_jobs(store, list(range(100 + seed * 10, 110 + seed * 10)), needs, timeout=1.5)
    won = {job: h for job, h in results.items() if isinstance(h, Holding)}
    assert len(won) == 4                               # 4 VNIs; the others found none free and failed
    assert len({h.vnis["p"] for h in won.values()}) == 4
    offsets = [o for h in won.values() for o in h.offsets[("lan", 0)]]
    assert len(offsets) == len(set(offsets)) == 12
    for job, h in results.items():
        if not isinstance(h, Holding):
            assert "all 4 job-private segments of network 'p' (VNIs 5000-5003) are in use" in str(h)
            assert parse_holding(store.comments[job]).state == FAILED
    for job, h in won.items():
        assert parse_holding(store.comments[job]) == h and h.state == COMMITTED


def test_addresses_never_collide_across_many_jobs():
    store = MemoryStore(rng=random.Random(3))
    needs = Needs(addresses=(AddressNeed("lan", 0, 2, 254, 3),))
    results = _run_jobs(store, list(range(1, 51)), needs)
    offsets = [o for h in results.values() for o in h.offsets[("lan", 0)]]
    assert len(offsets) == 150 and len(set(offsets)) == 150


def test_ended_jobs_free_what_they_held():
    store = MemoryStore()
    needs = Needs(vnis=(VniNeed("p", 5000, 5000),))
    assert _run_jobs(store, [1], needs)[1].vnis == {"p": 5000}
    store.states[1] = "COMPLETED"
    assert _run_jobs(store, [2], needs)[2].vnis == {"p": 5000}


def test_waits_for_a_free_vni_then_gets_it():
    store = MemoryStore()
    needs = Needs(vnis=(VniNeed("p", 5000, 5000),))
    _run_jobs(store, [1], needs)
    threading.Timer(0.3, lambda: store.states.__setitem__(1, "COMPLETED")).start()
    assert _run_jobs(store, [2], needs, timeout=5.0)[2].vnis == {"p": 5000}


def test_static_address_of_a_running_vm_is_refused_naming_only_own_jobs():
    store = MemoryStore()
    _run_jobs(store, [3], Needs(addresses=(AddressNeed("lan", 0, 10, 20, 1, static=5),)))
    same_user = _run_jobs(store, [6], Needs(addresses=(AddressNeed("lan", 1, 10, 20, 1, static=5),)))[6]
    other_user = _run_jobs(store, [7], Needs(addresses=(AddressNeed("lan", 1, 10, 20, 1, static=5),)))[7]
    assert isinstance(same_user, UserFault) and "(your job 3)" in str(same_user)
    assert isinstance(other_user, UserFault) and "in use by another running VM;" in str(other_user)
    assert "networks[1].address" in str(other_user)


def test_other_nodes_wait_for_the_committed_record():
    store = MemoryStore()
    store.comments[9] = "svm-net=0.k.p:v5000"                 # the previous run's record
    alloc = Allocator(store, 9, "u", 1, "/nonexistent", 1.0, sleep=lambda s: time.sleep(0.01))
    threading.Timer(0.2, lambda: store.write(9, "svm-net=1.c.p:v5001")).start()
    threading.Timer(0.4, lambda: store.write(9, "svm-net=1.k.p:v5001")).start()
    assert alloc.other_node("n1").vnis == {"p": 5001}
    store.comments[9] = "svm-net=1.x.p"
    with pytest.raises(UserFault, match="found no free"):
        alloc.other_node("n1")


# --- static MACs -------------------------------------------------------------------------------------------

@given(st.integers(1, MAX_JOB_ID), st.integers(0, 2047), st.integers(0, 7))
def test_derived_macs_lead_back_to_their_job(job, vm, nic):
    assert derived_mac_job(int(derive_mac(job, vm, nic).replace(":", ""), 16)) == job


def test_universal_macs_are_never_derived():
    assert derived_mac_job(0x525400123456 & ~(0x02 << 40)) is None       # 50:54:00:...: universal
    assert derived_mac_job(0x000000000000) is None


def test_macs_in_the_record_round_trip():
    h = Holding(restart=0, state=COMMITTED, macs={0: 0x525400123456, 2: 0x0A0000000001})
    assert format_holding(h) == "svm-net=0.k.m0:525400123456,m2:0a0000000001"
    assert parse_holding(format_holding(h)) == h
    assert parse_holding("svm-net=0.k.m9:525400123456") is None
    assert parse_holding("svm-net=0.k.m0:5254001234") is None


MAC = 0x525400ABCDEF


def test_a_static_mac_of_a_running_vm_is_refused_naming_only_own_jobs():
    store = MemoryStore()
    assert _run_jobs(store, [3], Needs(macs=(MacNeed(0, MAC),)))[3].macs == {0: MAC}
    same_user = _run_jobs(store, [6], Needs(macs=(MacNeed(1, MAC),)))[6]
    other_user = _run_jobs(store, [7], Needs(macs=(MacNeed(0, MAC),)))[7]
    assert isinstance(same_user, UserFault) and "(your job 3)" in str(same_user)
    assert isinstance(other_user, UserFault) and "networks[0].mac: 52:54:00:ab:cd:ef is in use" in str(other_user)
    assert parse_holding(store.comments[7]).state == FAILED
    store.states[3] = "COMPLETED"
    assert _run_jobs(store, [8], Needs(macs=(MacNeed(0, MAC),)))[8].macs == {0: MAC}


def test_a_static_mac_that_slurm_vm_gives_a_running_job_is_refused():
    store = MemoryStore()
    store.comments[40000] = ""                  # a running job with no record: its MACs are derived
    store.states[40000] = "RUNNING"
    theirs = int(derive_mac(40000, 0, 1).replace(":", ""), 16)
    assert isinstance(_run_jobs(store, [9], Needs(macs=(MacNeed(0, theirs),)))[9], UserFault)
    store.states[40000] = "COMPLETED"
    assert _run_jobs(store, [10], Needs(macs=(MacNeed(0, theirs),)))[10].macs == {0: theirs}


@pytest.mark.parametrize("seed", range(3))
def test_concurrent_jobs_never_share_a_static_mac(seed):
    store = MemoryStore(rng=random.Random(seed))
    results = _run_jobs(store, list(range(20 + seed * 10, 28 + seed * 10)), Needs(macs=(MacNeed(0, MAC),)))
    won = [h for h in results.values() if isinstance(h, Holding)]
    assert len(won) == 1 and won[0].macs == {0: MAC}


@pytest.mark.parametrize("seed", range(3))
def test_concurrent_jobs_never_share_a_static_address_and_one_gets_it(seed):
    store = MemoryStore(rng=random.Random(seed))
    needs = Needs(addresses=(AddressNeed("lan", 0, 10, 20, 1, static=5),))
    results = _run_jobs(store, list(range(50 + seed * 10, 56 + seed * 10)), needs)
    won = [h for h in results.values() if isinstance(h, Holding)]
    assert len(won) == 1 and won[0].offsets == {("lan", 0): (5,)}
