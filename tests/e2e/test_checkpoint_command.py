"""`slurm-vm checkpoint` through real Slurm 22.05, the real hooks and launcher, and the tiny guest's counter: a
manual save of a running VM (it keeps counting), --stop (the job waits held, `scontrol release` continues it),
--drop, --list, checkpoints of a job cancelled while held, and the refusals (another user, pending, no
checkpointing)."""

from __future__ import annotations

import os
import re

import pytest

from tests.e2e.test_checkpoint import assert_continued, counters, wait_count, wait_output

pytestmark = [pytest.mark.cluster, pytest.mark.guest, pytest.mark.both_flavours]   # hold, release, requeue, cancel
SPEC = "name: {name}\nimage: tiny-counter\nmemory: 256M\ndisk: 128M\n{extra}"
SAVED = re.compile(r"checkpoint of VM (\S+) \(job (\d+)\): (\S+), ([\d.]+) MiB, saved in ([\d.]+)s; (.*)")
PAUSED = re.compile(r"the guest was paused ([\d.]+)s and keeps running")


def ckpt(vc, *args: str, user: str = "svmtest"):
    return vc.slurm_vm("checkpoint", *args, user=user, timeout=900)


def job_ckpt_dir(vc, job: int) -> str:
    return os.path.join(vc.directory, "checkpoints", "svmtest", f"job-{job}")


def saved(vc, job: int) -> list[str]:
    jdir = job_ckpt_dir(vc, job)
    return sorted(n for n in os.listdir(jdir) if n.startswith("ckpt-")) if os.path.isdir(jdir) else []


def test_manual_checkpoint_keeps_the_vm_running_and_refusals(preempt_cluster):
    vc = preempt_cluster
    job = vc.submit(SPEC.format(name="man", extra="on_preempt: checkpoint\n"), "--partition=main", name="man")
    held = vc.submit(SPEC.format(name="held", extra="on_preempt: checkpoint\n"), "--hold", name="held")
    plain = vc.submit(SPEC.format(name="plain", extra=""), "--hold", name="plain")
    try:
        pending = ckpt(vc, str(held))
        assert pending.returncode == 5 and "VM held is pending" in pending.stderr, pending.stderr
        without = ckpt(vc, str(plain))
        assert without.returncode == 2 and "submitted without checkpointing" in without.stderr, without.stderr
        vc.wait_state(job, {"RUNNING"}, timeout=120)
        node = vc.job_field(job, "%N")
        before = wait_count(vc, node, job, 3)
        other = ckpt(vc, str(job), user="svmother")
        assert other.returncode == 4 and "not your VM" in other.stderr, other.stderr

        proc = ckpt(vc, str(job))
        assert proc.returncode == 0, proc.stdout + proc.stderr + vc.output(job)[-2000:]
        line = proc.stdout.strip()
        m = SAVED.fullmatch(line)
        assert m and m.group(1) == "man" and int(m.group(2)) == job, line
        paused = float(PAUSED.fullmatch(m.group(6)).group(1))
        assert os.path.dirname(m.group(3)) == job_ckpt_dir(vc, job) and float(m.group(4)) > 1, line
        after = wait_count(vc, node, job, before[-1][0] + 5)
        assert vc.job_field(job, "%T") == "RUNNING" and vc.job_field(job, "%N") == node
        # The counter went on: one boot, every count once, no gap between two lines beyond the pause.
        assert len({b for _, b, _ in after}) == 1, after[-5:]
        seen = [n for n, _, _ in after if n > 0]
        assert seen == list(range(seen[0], seen[-1] + 1)), seen
        gaps = [b[2] - a[2] for a, b in zip(after, after[1:]) if a[0] > 0]
        assert max(gaps) <= 1.0 + paused + 5.0, (max(gaps), paused)

        listed = vc.slurm_vm("list")
        row = next(r for r in listed.stdout.splitlines() if r.split()[:2] == ["man", str(job)])
        assert re.search(r"1 \(\d+ MiB\)$", row), listed.stdout
        status = vc.slurm_vm("status", str(job))
        assert "Checkpoints:" in status.stdout and "saved at manual of run 0" in status.stdout, status.stdout
    finally:
        for j in (held, plain):
            vc.cluster.client(["scancel", str(j)])
    assert vc.slurm_vm("stop", str(job)).returncode == 0
    assert vc.wait_gone_or_ended(job, timeout=120) == "COMPLETED", vc.output(job)
    assert saved(vc, job), "a manual checkpoint stays after the job ends"
    dropped = ckpt(vc, str(job), "--drop")
    assert dropped.returncode == 0 and dropped.stdout.startswith(f"dropped 1 checkpoint(s) of job {job}"), dropped
    assert not os.path.exists(job_ckpt_dir(vc, job))
    vc.wait_no_leaks(job)


def test_stop_holds_the_job_release_continues_and_a_cancelled_jobs_checkpoint_stays(preempt_cluster):
    vc = preempt_cluster
    job = vc.submit(SPEC.format(name="hib", extra="on_preempt: checkpoint\n"), "--partition=main", name="hib")
    vc.wait_state(job, {"RUNNING"}, timeout=120)
    first = vc.job_field(job, "%N")
    wait_count(vc, first, job, 3)
    proc = ckpt(vc, str(job), "--stop")
    assert proc.returncode == 0 and f"waits, held: `scontrol release {job}`" in proc.stdout, \
        proc.stdout + proc.stderr + vc.output(job)[-2000:]
    vc.wait_state(job, {"PENDING"}, timeout=120)
    assert "held" in vc.job_field(job, "%r"), vc.job_field(job, "%r")          # "job requeued in held state"
    row = next(r for r in vc.slurm_vm("list").stdout.splitlines() if r.split()[:2] == ["hib", str(job)])
    assert row.endswith("restores"), row

    assert vc.cluster.client(["scontrol", "release", str(job)], user="svmtest").returncode == 0
    out = wait_output(vc, job, "the guest continues", timeout=300)
    assert "restored from" in out, out
    before = counters(out.split("restored from")[0])       # the serial tail printed when the run ended
    second = vc.job_field(job, "%N")
    after = wait_count(vc, second, job, before[-1][0] + 2)
    assert_continued(before, [c for c in after if c[0] > 0])
    assert saved(vc, job) == [], "the restored checkpoint is removed"

    # A checkpoint whose job is cancelled while it waits stays until --drop; --list and list say so.
    assert ckpt(vc, str(job), "--stop").returncode == 0
    vc.wait_state(job, {"PENDING"}, timeout=120)
    other = ckpt(vc, str(job), "--drop", user="svmother")
    assert other.returncode == 4 and "not your VM" in other.stderr, other.stderr
    vc.cluster.client(["scancel", str(job)], user="svmtest")
    vc.wait_gone_or_ended(job, timeout=120)
    assert len(saved(vc, job)) == 1
    listing = ckpt(vc, "--list")
    row = next(r for r in listing.stdout.splitlines() if r.split()[:1] == [str(job)])
    assert "ended without restoring it" in row, listing.stdout
    assert "not listed here still have checkpoints" in vc.slurm_vm("list").stdout
    dropped = ckpt(vc, str(job), "--drop")
    assert dropped.returncode == 0 and "dropped 1 checkpoint(s)" in dropped.stdout, dropped.stdout + dropped.stderr
    again = ckpt(vc, str(job), "--drop")
    assert again.returncode == 3 and "has no checkpoints" in again.stderr, again.stderr
    vc.wait_no_leaks(job)
