"""The multi-VM checkpoint barrier: launchers (threads here) racing against a real directory."""

from __future__ import annotations

import os
import threading
import time

from slurm_vm.checkpoint import barrier


def test_announce_is_idempotent_and_arrived_counts_only_the_job(tmp_path):
    d = str(tmp_path)
    barrier.announce(d, barrier.PAUSED, 1)
    barrier.announce(d, barrier.PAUSED, 1)
    barrier.announce(d, barrier.PAUSED, 7)          # not an index of a 2-VM job
    assert barrier.arrived(d, barrier.PAUSED, 2) == {1}
    assert barrier.arrived(d, barrier.SAVED, 2) == set()
    assert barrier.arrived(str(tmp_path / "missing"), barrier.PAUSED, 2) == set()


def test_first_verdict_wins_among_racing_writers(tmp_path):
    d = str(tmp_path)
    start = threading.Barrier(8)
    wins: list[int] = []

    def writer(i: int) -> None:
        start.wait()
        if barrier.decide(d, f"verdict of {i}".encode(), i):
            wins.append(i)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert barrier.decided(d) == f"verdict of {wins[0]}".encode()
    assert sorted(os.listdir(d)) == [barrier.VERDICT]           # no temporary file left behind


def test_all_launchers_meet_in_the_same_round_and_pass(tmp_path):
    jdir = str(tmp_path)
    count, results, rounds = 3, {}, {}

    def launcher(i: int) -> None:
        time.sleep(0.05 * i)                                     # arrive at different times
        rnd = barrier.open_round(jdir, restart_count=2)
        rounds[i] = rnd
        barrier.announce(rnd, barrier.PAUSED, i)
        results[i] = barrier.wait_all(rnd, barrier.PAUSED, count, time.monotonic() + 10)

    threads = [threading.Thread(target=launcher, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {0: True, 1: True, 2: True}
    assert set(rounds.values()) == {os.path.join(jdir, "ckpt-000200")}


def test_a_launcher_that_never_arrives_times_out_and_the_round_is_skipped(tmp_path):
    jdir = str(tmp_path)
    rnd = barrier.open_round(jdir, restart_count=0)
    barrier.announce(rnd, barrier.PAUSED, 0)
    started = time.monotonic()
    assert not barrier.wait_all(rnd, barrier.PAUSED, 2, started + 0.5)
    assert 0.5 <= time.monotonic() - started < 5
    assert barrier.decide(rnd, b'{"aborted": "timeout"}', 0)
    # the late launcher, and the next attempt of this run, meet in the next round
    assert barrier.open_round(jdir, restart_count=0) == os.path.join(jdir, "ckpt-000001")


def test_a_decided_round_ends_the_wait_at_once(tmp_path):
    d = str(tmp_path)
    barrier.announce(d, barrier.PAUSED, 0)
    barrier.decide(d, b'{"aborted": "launcher 1 failed"}', 1)
    started = time.monotonic()
    assert not barrier.wait_all(d, barrier.PAUSED, 2, started + 30)
    assert time.monotonic() - started < 1
    assert barrier.wait_decided(d, started + 30) == b'{"aborted": "launcher 1 failed"}'


def test_wait_decided_gives_up_at_the_deadline(tmp_path):
    assert barrier.wait_decided(str(tmp_path), time.monotonic() + 0.3) is None


def test_rounds_of_later_runs_sort_after_earlier_ones():
    names = [barrier.round_name(r, k) for r, k in ((0, 0), (0, 99), (1, 0), (12, 3))]
    assert names == sorted(names) and names[-1] == "ckpt-001203"
