"""Checkpoint and restore of a two-VM job through real Slurm (22.05 and 24.11: preemption, requeue), the real
hooks and launchers (one per node, tasks of one srun step), QEMU and the tiny guest's counter; the VMs ping
each other over their job-private segment before and after the restore."""

from __future__ import annotations

import os
import re
import time

import hostlist
import pytest

from slurm_vm.checkpoint import barrier
from tests.e2e.test_checkpoint import counters, wait_count, wait_output

pytestmark = [pytest.mark.cluster, pytest.mark.guest, pytest.mark.both_flavours]   # srun steps, preemption, requeue
SPEC = """name: {name}
image: tiny-counter
count: 2
memory: 256M
disk: 128M
networks:
  - network: private
{extra}cloud_init:
  user_data: |
    #cloud-config
    runcmd:
      - (n=0; while true; do n=$((n+1)); for h in {name}-0 {name}-1; do ping -c1 -W1 $h >/dev/null && echo "SLURM-VM-TEST ping $h n=$n ok"; done; sleep 2; done) &
"""
PING = re.compile(r"SLURM-VM-TEST ping (\S+) n=(\d+) ok")


def entries(jdir: str) -> list[str]:
    """A job's checkpoint dir without its save lock (`.saving`)."""
    return sorted(n for n in os.listdir(jdir) if not n.startswith("."))


def job_nodes(vc, job: int) -> list[str]:
    """The job's nodes in Slurm's order: VM i runs on the i-th (node/context.py)."""
    return hostlist.expand_hostlist(vc.job_field(job, "%N"))


def pings(serial: str, host: str) -> list[int]:
    return [int(n) for h, n in PING.findall(serial) if h == host]


def wait_pings(vc, node: str, job: int, host: str, timeout: float = 180) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = pings(vc.serial_log(node, job), host)
        if seen:
            return seen
        time.sleep(1)
    raise AssertionError(f"no ping of {host} on {node}:\n{vc.serial_log(node, job)[-1500:]}\n"
                         f"output:\n{vc.output(job)[-3000:]}")


def run_dir_files(vc, node: str, job: int) -> str:
    return os.path.join(vc.node_state(node), "jobs", str(job))


def follow_until_restored(vc, job: int, first: list[str], timeout: float = 420) -> tuple[dict[int, list], list[str]]:
    """Keep the last counters of each VM seen before the save (the serial logs go with the first run's run
    dirs) until both VMs of the requeued job run again; returns them and the new run's nodes."""
    before: dict[int, list] = {}
    deadline = time.monotonic() + timeout
    while True:
        out = vc.output(job)
        if "pausing the guest" not in out:
            for i, node in enumerate(first):
                seen = counters(vc.serial_log(node, job))
                if seen:
                    before[i] = seen
        state = vc.job_field(job, "%T")
        if state == "RUNNING" and out.count("the guest continues") >= 2:
            return before, job_nodes(vc, job)
        assert state not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), out
        assert time.monotonic() < deadline, f"not restored: {state}\n{out[-4000:]}"
        time.sleep(0.5)


def check_both_continue(vc, job: int, name: str, before: dict[int, list], nodes: list[str]) -> None:
    out = vc.output(job)
    assert "all 2 VMs of the job are paused" in out and out.count("restored from") == 2, out
    for i, node in enumerate(nodes):
        last = before[i][-1]
        after = [c for c in wait_count(vc, node, job, last[0] + 2, timeout=240) if c[0] > 0]
        assert after[0][0] > last[0] and after[0][0] <= last[0] + 5, (i, before[i][-3:], after[:3])
        assert {b for _, b, _ in after} == {last[1]}, (i, last, after[:3])          # same boot
        assert after[0][2] > last[2], (i, last, after[0])                          # uptime went on
        wait_pings(vc, node, job, f"{name}-{1 - i}")                             # the peer still answers
    udir = os.path.join(vc.directory, "checkpoints", "svmtest")
    deadline = time.monotonic() + 30
    # removed once both VMs continue (other tests on this cluster may have left theirs: job-N of its own)
    while f"job-{job}" in os.listdir(udir):
        assert time.monotonic() < deadline, os.listdir(udir)
        time.sleep(1)
    assert vc.slurm_vm("stop", str(job)).returncode == 0
    assert vc.wait_gone_or_ended(job, timeout=180) == "COMPLETED", vc.output(job)
    vc.wait_no_leaks(job)


def test_two_vm_job_is_preempted_and_both_vms_continue(preempt_cluster):
    vc = preempt_cluster
    name = "mp"
    job = vc.submit(SPEC.format(name=name, extra="on_preempt: checkpoint\n"), "--partition=main", name=name)
    vc.wait_state(job, {"RUNNING"}, timeout=120)
    first = job_nodes(vc, job)
    assert len(first) == 2
    for i, node in enumerate(first):
        wait_count(vc, node, job, 3, timeout=240)
        wait_pings(vc, node, job, f"{name}-{1 - i}")                      # the VMs reach each other
    hog = vc.cluster.client(["sbatch", "--parsable", "--partition=urgent", "--exclusive", f"--nodelist={first[0]}",
                             "--output=/dev/null", "--wrap=sleep 900"], user="svmtest")
    assert hog.returncode == 0, hog.stderr
    try:
        before, second = follow_until_restored(vc, job, first)
        assert first[0] not in second and len(second) == 2
        assert vc.output(job).count("preempt: pausing the guest") == 2
        check_both_continue(vc, job, name, before, second)
    finally:
        vc.cluster.client(["scancel", hog.stdout.strip().split(";")[0]])
        vc.cluster.client(["scancel", str(job)])


def test_two_vm_job_checkpoints_at_its_time_limit_and_continues(preempt_cluster):
    """The --signal warning reaches the batch shell (srun), which forwards it to both launchers."""
    vc = preempt_cluster
    name = "mt"
    # 3 minutes: slurm-vm asks for the warning grace + 60 s before the end and Slurm may send it up to 60 s
    # earlier still, so a 2-minute job can get it at its start, before the guest has booted
    job = vc.submit(SPEC.format(name=name, extra="on_timeout: checkpoint\n"), "--partition=main", "--time=3",
                    name=name)
    try:
        vc.wait_state(job, {"RUNNING"}, timeout=120)
        first = job_nodes(vc, job)
        for node in first:
            wait_count(vc, node, job, 3, timeout=240)
        before, second = follow_until_restored(vc, job, first)
        # the restored run would reach its own warning in ~50 s: give the checks room (as root)
        update = vc.cluster.client(["scontrol", "update", f"JobId={job}", "TimeLimit=15"])
        assert update.returncode == 0, update.stderr
        out = vc.output(job)
        assert out.count("timeout: pausing the guest") == 2 and "requeued the job" in out, out
        check_both_continue(vc, job, name, before, second)
    finally:
        vc.cluster.client(["scancel", str(job)])


def test_a_missing_participant_leaves_no_valid_checkpoint(preempt_cluster):
    """Only VM 0's launcher gets the time-limit warning: it pauses, VM 1 never does; after the barrier's
    timeout VM 0 resumes (then shuts down, as without a checkpoint) and the round is aborted: no checkpoint."""
    vc = preempt_cluster
    name = "mq"
    job = vc.submit(SPEC.format(name=name, extra="on_timeout: checkpoint\n"), "--partition=main", name=name)
    vc.wait_state(job, {"RUNNING"}, timeout=120)
    nodes = job_nodes(vc, job)
    try:
        for node in nodes:
            wait_count(vc, node, job, 3, timeout=240)
        with open(os.path.join(run_dir_files(vc, nodes[0], job), "launcher.pid")) as fh:
            pid = fh.read().strip()
        kill = vc.cluster.node_exec(nodes[0], ["kill", "-USR1", pid], timeout=20)
        assert kill.returncode == 0, kill.stderr
        out = wait_output(vc, job, "checkpoint failed", timeout=240)
        assert "VM(s) 1 did not pause within 60s" in out, out
        jdir = os.path.join(vc.directory, "checkpoints", "svmtest", f"job-{job}")
        (rnd,) = entries(jdir)
        files = sorted(os.listdir(os.path.join(jdir, rnd)))
        assert files == ["paused-0", barrier.VERDICT], files          # nobody saved, no job manifest
        with open(os.path.join(jdir, rnd, barrier.VERDICT)) as fh:
            assert '"kind": "aborted"' in fh.read()
        # VM 1 ran on throughout
        n = counters(vc.serial_log(nodes[1], job))[-1][0]
        wait_count(vc, nodes[1], job, n + 3)
    finally:
        vc.cluster.client(["scancel", str(job)])
    vc.wait_gone_or_ended(job, timeout=240)
    vc.wait_no_leaks(job)
    # the aborted round is no checkpoint, but it stays until the job's next run or a drop
    drop = vc.slurm_vm("checkpoint", str(job), "--drop")
    assert drop.returncode == 0, drop.stdout + drop.stderr
    left = os.listdir(os.path.join(vc.directory, "checkpoints", "svmtest"))   # other tests' jobs may keep theirs
    assert f"job-{job}" not in left and f".job-{job}.saving" not in left, f"the aborted round stayed: {left}"
