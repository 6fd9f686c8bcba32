"""Checkpoint and restore through real Slurm (preemption, time limit, requeue), the real hooks and launcher, and
the tiny guest's counter (svmtest.counter) read from the serial log on each node."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.guest, pytest.mark.both_flavours]   # preemption, time limit, requeue
COUNT = re.compile(r"SLURM-VM-TEST count=(\d+) boot_id=(\S+) uptime=([\d.]+)")
SPEC = """name: {name}
image: tiny-counter
memory: 256M
disk: 128M
networks:
  - network: lan
    address: 10.77.0.10/24
{extra}"""


def entries(jdir: str) -> list[str]:
    """A job's checkpoint dir without its save lock (`.saving`)."""
    return sorted(n for n in os.listdir(jdir) if not n.startswith("."))


def counters(serial: str) -> list[tuple[int, str, float]]:
    return [(int(n), b, float(u)) for n, b, u in COUNT.findall(serial)]


def wait_count(vc, node: str, job: int, at_least: int, timeout: float = 180) -> list[tuple[int, str, float]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = counters(vc.serial_log(node, job))
        if seen and seen[-1][0] >= at_least:
            return seen
        time.sleep(0.5)
    raise AssertionError(f"count {at_least} not reached on {node}:\n{vc.serial_log(node, job)[-1500:]}\n"
                         f"output:\n{vc.output(job)[-3000:]}")


def wait_running_elsewhere(vc, job: int, first: str, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, node = vc.job_field(job, "%T"), vc.job_field(job, "%N")
        if state == "RUNNING" and node and node != first:
            return node
        assert state not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), vc.output(job)
        time.sleep(0.5)
    raise AssertionError(f"job {job} not running on another node after {timeout}s: {vc.job_field(job, '%T %N %r')}"
                         f"\n{vc.output(job)[-3000:]}")


def wait_output(vc, job: int, marker: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while marker not in vc.output(job):
        assert time.monotonic() < deadline, f"{marker!r} not in the output:\n{vc.output(job)[-3000:]}"
        time.sleep(0.5)
    return vc.output(job)


def counts_until_saved(vc, node: str, job: int, timeout: float = 300) -> list[tuple[int, str, float]]:
    """The counters on the node's serial log until the save is written. The job output's serial tail has them
    too, but the epilog removes the run dir with the log, and the tail of a run ended by a requeue can be
    missing from the output (seen once on 22.05)."""
    deadline, seen = time.monotonic() + timeout, []
    while "written in" not in vc.output(job):
        assert time.monotonic() < deadline, f"no checkpoint written:\n{vc.output(job)[-3000:]}"
        seen = counters(vc.serial_log(node, job)) or seen
        time.sleep(0.3)
    return seen


def assert_continued(before, after) -> None:
    assert after, "no counter after the restore"
    last = before[-1]
    assert after[0][0] > last[0] and after[0][0] <= last[0] + 5, (before[-3:], after[:3])   # counter went on
    assert {b for _, b, _ in after} == {last[1]}, (last, after[:3])                         # same boot
    assert after[0][2] > last[2], (last, after[0])                                          # uptime went on


def stop_and_check(vc, job: int, node: str) -> None:
    ping = vc.cluster.node_exec(node, ["ping", "-c", "2", "-W", "3", "10.77.0.10"], timeout=30)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert vc.slurm_vm("stop", str(job)).returncode == 0
    assert vc.wait_gone_or_ended(job, timeout=120) == "COMPLETED", vc.output(job)
    vc.wait_no_leaks(job)


def test_preempted_vm_continues_on_another_node(preempt_cluster):
    vc = preempt_cluster
    job = vc.submit(SPEC.format(name="pre", extra="on_preempt: checkpoint\n"), "--partition=main", name="pre")
    vc.wait_state(job, {"RUNNING"}, timeout=120)
    first = vc.job_field(job, "%N")
    before = wait_count(vc, first, job, 3)
    hog = vc.cluster.client(["sbatch", "--parsable", "--partition=urgent", "--exclusive", f"--nodelist={first}",
                             "--output=/dev/null", "--wrap=sleep 900"], user="svmtest")
    assert hog.returncode == 0, hog.stderr
    try:
        second = wait_running_elsewhere(vc, job, first)
        out = wait_output(vc, job, "the guest continues")
        assert "preempt: pausing the guest" in out and "restored from" in out, out
        before = counters(out.split("restored from")[0]) or before    # the serial tail printed after the save
        after = wait_count(vc, second, job, before[-1][0] + 2)
        assert_continued(before, [c for c in after if c[0] > 0])
        stop_and_check(vc, job, second)
        assert not os.listdir(os.path.join(vc.directory, "checkpoints", "svmtest")), "checkpoint not removed"
        assert_preempted_run_in_accounting(vc, job)
    finally:
        vc.cluster.client(["scancel", hog.stdout.strip().split(";")[0]])


def assert_preempted_run_in_accounting(vc, job: int) -> None:
    """sacct (the cluster has accounting storage) and `list --all`: the preempted run, then the one that ended."""
    listing = vc.slurm_vm("list", "--all", "--json")
    assert listing.returncode == 0, listing.stderr
    record = {r["job_id"]: r for r in json.loads(listing.stdout)}[job]
    # 22.05 records the preempted run REQUEUED (its batch step CANCELLED 0:15); Slurm 24.05+ records PREEMPTED
    assert record["state"] == "COMPLETED" and record["earlier_runs"] in (["REQUEUED"], ["PREEMPTED"]), record
    assert record["exit_code"] == "0:0" and record["restarts"] == 1, record


def test_time_limit_checkpoints_requeues_and_ends_only_at_poweroff(preempt_cluster):
    vc = preempt_cluster
    # 3 minutes, not 2: slurm-vm asks for the warning grace + 60 s before the end and Slurm may send it up to 60 s
    # earlier still, so a 2-minute job can get it at its start, before the guest counts
    job = vc.submit(SPEC.format(name="tlim", extra="on_timeout: checkpoint\n"), "--time=3", name="tlim")
    vc.wait_state(job, {"RUNNING"}, timeout=120)
    first = vc.job_field(job, "%N")
    wait_count(vc, first, job, 3)
    seen = counts_until_saved(vc, first, job)                         # the warning, the save
    out = wait_output(vc, job, "the guest continues", timeout=300)     # the requeue, the restore
    assert "timeout: pausing the guest" in out and "requeued the job" in out, out
    before = counters(out.split("restored from")[0]) or seen
    second = out.split("restoring VM tlim on ")[-1].split()[0]      # the node of the run that restored
    after = wait_count(vc, second, job, before[-1][0] + 2)
    assert_continued(before, [c for c in after if c[0] > 0])
    stop_and_check(vc, job, second)


def test_damaged_checkpoint_is_refused_and_kept(preempt_cluster):
    vc = preempt_cluster
    node = vc.cluster.nodes[-1]
    job = vc.submit(SPEC.format(name="flip", extra="on_preempt: checkpoint\n"), "--partition=main",
                    f"--nodelist={node}", name="flip")
    vc.wait_state(job, {"RUNNING"}, timeout=120)
    wait_count(vc, node, job, 3)
    hog = vc.cluster.client(["sbatch", "--parsable", "--partition=urgent", "--exclusive", f"--nodelist={node}",
                             "--output=/dev/null", "--wrap=sleep 900"], user="svmtest")
    assert hog.returncode == 0, hog.stderr
    hog_id = hog.stdout.strip().split(";")[0]
    try:
        wait_output(vc, job, "continues from the checkpoint when it starts again")   # saved; waits for its node
        jdir = os.path.join(vc.directory, "checkpoints", "svmtest", f"job-{job}")
        (ckpt,) = entries(jdir)
        manifest = json.load(open(os.path.join(jdir, ckpt, "manifest.json")))
        saved_by, state_name = manifest["vmm_version"], manifest["states"][0]["name"]   # state.bin[.zst]: auto
        node_qemu = vc.cluster.node_exec(node, ["qemu-system-x86_64", "--version"], timeout=60).stdout
        assert f"version {saved_by} " in node_qemu, (saved_by, node_qemu)    # 24.11: trixie's QEMU 10
        state = os.path.join(jdir, ckpt, state_name)
        with open(state, "r+b") as fh:
            fh.seek(os.path.getsize(state) // 2)
            byte = fh.read(1)
            fh.seek(-1, os.SEEK_CUR)
            fh.write(bytes([byte[0] ^ 0x04]))
    finally:
        vc.cluster.client(["scancel", hog_id])
    assert vc.wait_gone_or_ended(job, timeout=240) == "FAILED", vc.output(job)
    out = vc.output(job)
    assert f"{state_name} does not match its sha256" in out and "the checkpoint stays" in out, out
    assert os.path.exists(state)
    vc.wait_no_leaks(job)
