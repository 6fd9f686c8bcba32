"""The job's limits through real Slurm: memory (cgroup) refused before the VMM starts; the time limit."""

from __future__ import annotations

import os
import time

import pytest

from slurm_vm.config import load_config
from slurm_vm.spec import parse_spec
from slurm_vm.submit import plan_submission

SPEC = "name: {name}\nimage: tiny\nmemory: 256M\nnetworks:\n  - network: lan\n    address: 10.77.0.10/24\n"


@pytest.mark.cluster
@pytest.mark.both_flavours   # the memory Slurm hands the job
def test_a_hand_made_job_with_too_little_memory_is_refused_before_the_vmm_starts(vm_cluster):
    """A batch job written by hand (slurm-vm's script, --mem=300M): the launcher reads the job's cgroup."""
    vc = vm_cluster
    config = load_config(vc.config_path)
    text = SPEC.format(name="lowmem")
    plan = plan_submission(text, parse_spec(text, "lowmem", config), config)
    args = [a if not a.startswith("--mem=") else "--mem=300M" for a in plan.sbatch_args]
    script = os.path.join(vc.directory, "specs", f"lowmem-{time.monotonic_ns()}.sh")
    with open(script, "w") as fh:
        fh.write(plan.script)
    os.chmod(script, 0o644)
    proc = vc.cluster.client(["sbatch", *args, f"--output={vc.directory}/out/%j.out", script], user="svmtest",
                             env={"SLURM_VM_CONFIG": vc.config_path})
    assert proc.returncode == 0, proc.stderr
    job = int(proc.stdout.strip().split(";")[0])
    assert vc.wait_gone_or_ended(job, timeout=90) == "FAILED", vc.output(job)
    out = vc.output(job)
    assert "the job may use 300 MiB of memory but the VM needs 576 MiB (256 MiB guest + 320 MiB hypervisor " \
           "overhead)" in out, out
    assert "starting VM" not in out, out
    vc.wait_no_leaks(job)
