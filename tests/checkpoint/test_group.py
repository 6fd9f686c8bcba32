"""Multi-VM checkpoints: launchers (threads) racing through real rounds in a real directory; the VMM steps are
stand-ins that write a part the way flow.save_part does (files first, the part's manifest last)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from slurm_vm.checkpoint import barrier, group, store
from slurm_vm.checkpoint.manifest import Expected, FileEntry, Manifest, sha256_of, write_manifest

UID = os.getuid()
JOB = 77


def macs(index: int) -> tuple[str, ...]:
    return (f"52:54:00:00:00:{index:02x}",)


def expected(index: int) -> Expected:
    return Expected(job_id=JOB, uid=UID, vmm="qemu", accelerator="tcg", cpus=1, memory_bytes=256 << 20,
                    macs=macs(index), base_image="/img/base.qcow2")


def write_part(path: str, index: int) -> Manifest:
    entries = []
    for name, data in (("state.bin", b"ram%d" % index * 500), ("overlay.qcow2", b"disk%d" % index * 300)):
        with open(os.path.join(path, name), "wb") as fh:
            fh.write(data)
        size, digest = sha256_of(os.path.join(path, name))
        entries.append(FileEntry(name, size, digest))
    manifest = Manifest(job_id=JOB, uid=UID, user="u", restart_count=0, reason="preempt", created=1.0,
                        image="tiny", base_image="/img/base.qcow2", base_size=1 << 26, vmm="qemu",
                        vmm_version="7.2.15", accelerator="tcg", cpus=1, memory_bytes=256 << 20, macs=macs(index),
                        instance_id=f"i-{index}", compressed=False, states=(entries[0],), overlay=entries[1])
    write_manifest(path, manifest)
    return manifest


def run_launchers(jdir: str, count: int, present: list[int], barrier_timeout: float = 10.0,
                  fail_save: int | None = None, restart_count: int = 0) -> dict[int, object]:
    """Launchers `present` of a `count`-VM job; returns index -> committed round dir or the RoundAborted."""
    results: dict[int, object] = {}
    paused: set[int] = set()
    saved_while_someone_ran: list[int] = []

    def launcher(i: int) -> None:
        time.sleep(0.03 * i)

        def save_part(path: str) -> Manifest:
            if len(paused) < len(present):       # another launcher's guest still ran while this one saved
                saved_while_someone_ran.append(i)
            if i == fail_save:
                raise OSError(28, "No space left on device")
            return write_part(path, i)

        try:
            results[i] = group.save_together(jdir, restart_count, i, count, "preempt", JOB, pause=lambda: paused.add(i),
                                             save_part=save_part, save_timeout=10.0, barrier_timeout=barrier_timeout)
        except group.RoundAborted as exc:
            results[i] = exc

    threads = [threading.Thread(target=launcher, args=(i,)) for i in present]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not saved_while_someone_ran, "a VM saved before every VM had paused"
    return results


def test_every_vm_pauses_before_any_saves_and_the_job_manifest_commits_last(tmp_path):
    jdir = store.job_dir(str(tmp_path), JOB)
    os.makedirs(jdir)
    results = run_launchers(jdir, 3, [0, 1, 2])
    rounds = set(results.values())
    assert rounds == {os.path.join(jdir, "ckpt-000000")}, results
    (rnd,) = rounds
    job = group.read_verdict(rnd, UID)
    assert job.count == 3 and job.job_id == JOB and len(job.parts) == 3
    for i in range(3):
        found, why = group.find_for_restore(str(tmp_path), expected(i), i, 3)
        assert why == "" and found.path == group.part_dir(rnd, i) and found.manifest.macs == macs(i)


def test_a_missing_participant_leaves_no_valid_checkpoint(tmp_path):
    jdir = store.job_dir(str(tmp_path), JOB)
    os.makedirs(jdir)
    started = time.monotonic()
    results = run_launchers(jdir, 3, [0, 2], barrier_timeout=1.0)     # VM 1's launcher never arrives
    assert time.monotonic() - started < 10
    assert all(isinstance(r, group.RoundAborted) for r in results.values()), results
    assert "VM(s) 1 did not pause" in str(results[0])
    rnd = os.path.join(jdir, "ckpt-000000")
    assert not any(name.startswith("vm-") for name in os.listdir(rnd))        # nobody saved
    assert group.find_for_restore(str(tmp_path), expected(0), 0, 3) == (None, "")   # no checkpoint: boot
    # the late launcher skips the decided round and, alone in the next one, gives up too: nothing commits
    with pytest.raises(group.RoundAborted, match="ckpt-000001"):
        group.save_together(jdir, 0, 1, 3, "preempt", JOB, pause=lambda: None,
                            save_part=lambda p: write_part(p, 1), save_timeout=5, barrier_timeout=0.5)
    assert group.find_for_restore(str(tmp_path), expected(1), 1, 3) == (None, "")
    os.mkdir(os.path.join(jdir, "ckpt-000002"))          # a round whose launchers were killed: not decided
    found, why = group.find_for_restore(str(tmp_path), expected(1), 1, 3)
    assert found is None and "ckpt-000002: no job manifest (the save did not finish)" in why


def test_a_failed_save_aborts_every_launcher_and_an_older_checkpoint_stays_the_one(tmp_path):
    jdir = store.job_dir(str(tmp_path), JOB)
    os.makedirs(jdir)
    first = run_launchers(jdir, 2, [0, 1])
    assert set(first.values()) == {os.path.join(jdir, "ckpt-000000")}
    second = run_launchers(jdir, 2, [0, 1], fail_save=1, restart_count=1)
    assert all(isinstance(r, group.RoundAborted) for r in second.values()), second
    assert "VM 1 could not save" in str(second[0])
    found, why = group.find_for_restore(str(tmp_path), expected(0), 0, 2)
    assert found is not None and found.path.startswith(os.path.join(jdir, "ckpt-000000")), why


def test_damaged_part_or_foreign_job_manifest_is_refused(tmp_path):
    jdir = store.job_dir(str(tmp_path), JOB)
    os.makedirs(jdir)
    (rnd,) = set(run_launchers(jdir, 2, [0, 1]).values())
    with open(os.path.join(rnd, "vm-1", "state.bin"), "r+b") as fh:
        fh.write(b"X")
    assert group.find_for_restore(str(tmp_path), expected(0), 0, 2)[0] is not None
    found, why = group.find_for_restore(str(tmp_path), expected(1), 1, 2)
    assert found is None and "vm-1: state.bin does not match its sha256" in why
    found, why = group.find_for_restore(str(tmp_path), expected(0), 0, 3)
    assert found is None and "holds 2 VMs, the job has 3" in why
    with open(os.path.join(rnd, "vm-0", "manifest.json"), "a") as fh:
        fh.write(" ")
    found, why = group.find_for_restore(str(tmp_path), expected(0), 0, 2)
    assert found is None and "does not match the job manifest" in why


def test_the_round_is_removed_only_after_every_vm_continued_and_prune_keeps_the_newest(tmp_path):
    jdir = store.job_dir(str(tmp_path), JOB)
    os.makedirs(jdir)
    (old,) = set(run_launchers(jdir, 2, [0, 1]).values())
    (new,) = set(run_launchers(jdir, 2, [0, 1], restart_count=1).values())
    assert group.prune(jdir, 1, UID) == [old]
    assert not group.continued(new, 1, 2) and os.path.isdir(new)
    assert group.continued(new, 0, 2)
    assert not os.path.exists(new) and not os.path.exists(jdir)


def test_an_aborted_verdict_is_refused_with_its_reason(tmp_path):
    barrier.decide(str(tmp_path), group.abort_content(1, "disk full"), 1)
    with pytest.raises(group.CheckpointRefused, match="aborted"):
        group.read_verdict(str(tmp_path), UID)


def test_status_lists_a_job_checkpoint_with_summed_sizes_and_an_aborted_round_as_unusable(tmp_path):
    from slurm_vm.checkpoint.listing import describe, job_checkpoints
    jdir = store.job_dir(str(tmp_path), JOB)
    os.makedirs(jdir)
    run_launchers(jdir, 2, [0], barrier_timeout=0.3)                   # aborted: VM 1 never came
    (rnd,) = set(run_launchers(jdir, 2, [0, 1], restart_count=1).values())
    newest, aborted = job_checkpoints(str(tmp_path), JOB)
    assert newest["path"] == rnd and newest["complete"] and newest["vms"] == 2
    assert newest["size_bytes"] == sum(500 * 4 + 300 * 5 for _ in range(2))
    assert "2 VMs" in describe(newest) and not aborted["complete"] and "aborted" in aborted["problem"]


def test_restored_vms_resume_together_and_a_used_round_is_never_restored_again(tmp_path):
    jdir = store.job_dir(str(tmp_path), JOB)
    os.makedirs(jdir)
    (rnd,) = set(run_launchers(jdir, 2, [0, 1]).values())
    resumed: dict[int, float] = {}

    def restore(i: int) -> None:
        time.sleep(0.4 * i)                   # VM 1 loads later
        assert group.resume_together(rnd, i, 2, timeout=10)
        resumed[i] = time.monotonic()

    threads = [threading.Thread(target=restore, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert abs(resumed[0] - resumed[1]) < 0.35                     # VM 0 waited for VM 1
    started = time.monotonic()
    os.mkdir(tmp_path / "alone")
    assert not group.resume_together(str(tmp_path / "alone"), 0, 2, timeout=0.3)    # VM 1 never loads: go on
    assert time.monotonic() - started < 5
    assert not group.continued(rnd, 0, 2)                          # VM 1 never continues (say, refused)
    assert group.find_for_restore(str(tmp_path), expected(1), 1, 2) == (None, "")


def test_aborted_rounds_of_earlier_runs_are_discarded_and_interrupted_ones_stay(tmp_path):
    jdir = store.job_dir(str(tmp_path), JOB)
    os.makedirs(jdir)
    run_launchers(jdir, 2, [0], barrier_timeout=0.3)                   # run 0: aborted
    os.mkdir(os.path.join(jdir, "ckpt-000001"))                       # run 0: interrupted (no verdict)
    run_launchers(jdir, 2, [1], barrier_timeout=0.3, restart_count=1)  # run 1: aborted, but run 1 is this run
    assert group.discard_aborted(jdir, 1, UID) == [os.path.join(jdir, "ckpt-000000")]
    assert sorted(os.listdir(jdir)) == ["ckpt-000001", "ckpt-000100"]
    assert group.discard_aborted(jdir, 2, UID) == [os.path.join(jdir, "ckpt-000100")]
    assert os.listdir(jdir) == ["ckpt-000001"]
