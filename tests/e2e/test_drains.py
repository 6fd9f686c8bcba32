"""No user input drains a node (issue 20), through real Slurm with slurm-vm's Prolog/Epilog, no guest booted.

Each attack was a drained node on the old main ("Prolog error" / "Epilog error"); now the job fails (or
ends) with one line naming the cause, `sinfo -R` lists no node, `node doctor` finds nothing and nothing
of the job stays in the state dir.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from slurm_vm.config import load_config
from slurm_vm.spec import parse_spec
from slurm_vm.submit import plan_submission

pytestmark = [pytest.mark.cluster, pytest.mark.both_flavours]

BENIGN = "name: {name}\nimage: tiny\nmemory: 256M\nnetworks:\n  - network: lan\n"
SURROGATE = BENIGN + 'cloud_init: {{user_data: "#!/bin/sh\\n\\uD800"}}\n'


def sbatch(vc, name: str, script: str, args: tuple[str, ...], user: str = "svmtest") -> int:
    """Submit `script` as `user` with `args` (what a user can do by hand, bypassing `slurm-vm submit`)."""
    path = os.path.join(vc.directory, "specs", f"{name}-{time.monotonic_ns()}.sh")
    with open(path, "w") as fh:
        fh.write(script)
    os.chmod(path, 0o644)
    out = os.path.join(vc.directory, "out", "%j.out")
    proc = vc.cluster.client(["sbatch", "--parsable", f"--output={out}", *args, path], user=user)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().split(";")[0])


def assert_node_healthy(vc, job: int) -> None:
    vc.wait_no_leaks(job)
    reasons = vc.cluster.client(["sinfo", "-h", "-R", "-o", "%N %E"]).stdout.strip()
    assert reasons == "", reasons
    for node in vc.cluster.nodes:
        argv = [os.path.join(os.path.dirname(sys.executable), "slurm-vm"), "node", "doctor", "--node", node, "--json"]
        env = ["env", f"SLURM_VM_CONFIG={vc.config_path}", *[f"{k}={v}" for k, v in vc.cluster.env.items()]]
        found = vc.cluster.node_exec(node, [*env, *argv], timeout=60)
        assert found.returncode == 0 and json.loads(found.stdout or "[]") == [], (node, found.stdout, found.stderr)


def test_surrogate_in_user_data_fails_the_job_not_the_node(vm_cluster):
    """`cloud_init: {user_data: "#!/bin/sh\\n\\uD800"}` passed validate and drained the node (the seed writer's
    UnicodeEncodeError). `slurm-vm validate` refuses it now; sent past it (the job slurm-vm submit would make,
    by hand), the prolog refuses it and the job fails with the field named."""
    vc = vm_cluster
    spec_path = os.path.join(vc.directory, "specs", "surrogate.yaml")
    with open(spec_path, "w") as fh:
        fh.write(SURROGATE.format(name="sierra"))
    os.chmod(spec_path, 0o644)
    checked = vc.slurm_vm("validate", spec_path)
    assert checked.returncode == 2 and "cloud_init.user_data" in checked.stdout + checked.stderr, checked
    config = load_config(vc.config_path)
    plan = plan_submission(SURROGATE.format(name="sierra"), parse_spec(BENIGN.format(name="sierra"), "s", config),
                           config)
    job = sbatch(vc, "sierra", plan.script, tuple(a for a in plan.sbatch_args if a != "--parsable"))
    assert vc.wait_gone_or_ended(job, timeout=120) == "FAILED", vc.output(job)
    out = vc.output(job)
    assert "refused" in out and "cloud_init.user_data" in out and "surrogate" in out, out
    assert_node_healthy(vc, job)


PLAIN_JOB = """#!/bin/sh
jdir={state}/$SLURMD_NODENAME/jobs/$SLURM_JOB_ID
{plant}
echo planted
"""
FIFO = "mkfifo $jdir/vmm.pid"
NEIGHBOURS = """rm -f $jdir/seed.iso $jdir/vm.json $jdir/overlay.qcow2
ln -s /etc/shadow $jdir/vmm.pid
ln -s /etc $jdir/vm.json
truncate -s 1T $jdir/overlay.qcow2
ln $jdir/overlay.qcow2 $jdir/launcher.pid
mkdir $jdir/seed.iso && cd $jdir/seed.iso && i=0 && while [ $i -lt 2000 ]; do mkdir d && cd d && mkfifo f; i=$((i+1)); done
mkdir $jdir/locked && mkfifo $jdir/locked/f && chmod 000 $jdir/locked"""


@pytest.mark.parametrize("case,plant", [("fifo", FIFO), ("neighbours", NEIGHBOURS)])
def test_plain_job_planting_in_its_job_dir_does_not_drain(vm_cluster, case, plant):
    """A plain job with slurm-vm's comment (the prolog prepares its job dir and hands it over) runs
    `mkfifo <job dir>/vmm.pid`: the epilog blocked on the FIFO until its limit and drained the node. The
    neighbours: a link to /etc/shadow or /etc, a huge file, a hard link, a directory 2000 deep full of FIFOs
    and one nobody may enter, at the names root opens or removes."""
    vc = vm_cluster
    config = load_config(vc.config_path)
    spec_text = BENIGN.format(name="tango")
    plan = plan_submission(spec_text, parse_spec(spec_text, "s", config), config)
    script = PLAIN_JOB.format(state=vc.state_root, plant=plant)
    shadow = os.stat("/etc/shadow")
    job = sbatch(vc, "tango", script, (f"--comment={plan.comment}", "--mem=512M"))
    assert vc.wait_gone_or_ended(job, timeout=180) == "COMPLETED", vc.output(job)
    assert "planted" in vc.output(job)
    assert_node_healthy(vc, job)
    after = os.stat("/etc/shadow")
    assert (after.st_ino, after.st_mode, after.st_uid) == (shadow.st_ino, shadow.st_mode, shadow.st_uid)
