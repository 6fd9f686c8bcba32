"""A VM job whose user changes its comment while it runs is still torn down (real Slurm, real hooks).

The hooks' shell entry starts Python for a job without slurm-vm's comment prefix only when the node
holds the job's state; this checks that path end to end, whichever comment Slurm hands the epilog.
"""

from __future__ import annotations

import os
import time

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.guest, pytest.mark.both_flavours]   # the job comment

SPEC = "name: golf\nimage: tiny\ncpus: 1\nmemory: 256M\nnetworks:\n  - network: lan\n"


def test_vm_job_with_a_changed_comment_leaves_nothing(vm_cluster):
    vc = vm_cluster
    job = vc.submit(SPEC, name="golf")
    vc.wait_state(job, {"RUNNING"}, timeout=120)
    node = vc.job_field(job, "%N")
    job_dir = os.path.join(vc.node_state(node), "jobs", str(job))
    deadline = time.monotonic() + 60
    while not os.path.isdir(job_dir):
        assert time.monotonic() < deadline, "the prolog made no job dir"
        time.sleep(0.1)
    update = vc.cluster.client(["scontrol", "update", f"jobid={job}", "comment=just a note"], user="svmtest")
    assert update.returncode == 0, update.stderr
    assert vc.job_field(job, "%k") == "just a note"
    vc.cluster.client(["scancel", str(job)], user="svmtest")
    vc.wait_gone_or_ended(job, timeout=90)
    vc.wait_no_leaks(job)
    with open(os.path.join(vc.directory, "hooks.log"), errors="replace") as fh:
        lines = [line for line in fh if f"slurm-vm-epilog: job {job}:" in line]
    # Which comment the epilog saw (Slurm's choice, recorded for the docs): the launch credential's
    # (a normal teardown) or the changed one (the shell entry's state check).
    print("epilog log:", lines)
    assert any("torn down" in line for line in lines), lines
