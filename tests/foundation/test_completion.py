"""Shell completion: commands (click, through the real entry point) and VM names/job ids (pure part)."""

from __future__ import annotations

import os
import subprocess
import sys

from slurm_vm.completion import vm_candidates
from slurm_vm.slurm import JobInfo
from slurm_vm.transport import CURRENT_PREFIX

SLURM_VM = os.path.join(os.path.dirname(sys.executable), "slurm-vm")


def complete(words: str, cword: int, **env: str) -> list[str]:
    proc = subprocess.run([SLURM_VM], env={**os.environ, "_SLURM_VM_COMPLETE": "bash_complete",
                                           "COMP_WORDS": words, "COMP_CWORD": str(cword), **env},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [line.split(",", 1)[1] for line in proc.stdout.splitlines() if line]


def test_commands_complete():
    assert complete("slurm-vm co", 1) == ["console"]
    assert set(complete("slurm-vm s", 1)) >= {"submit", "status", "stop", "ssh", "scp"}
    assert "console-relay" not in complete("slurm-vm con", 1)


def test_vm_completion_without_a_config_offers_nothing_and_prints_no_error(tmp_path):
    assert complete("slurm-vm console ", 2, SLURM_VM_CONFIG=str(tmp_path / "missing.yaml")) == []


def test_vm_candidates_are_active_vm_jobs_by_name_and_id():
    vm = CURRENT_PREFIX + "0" * 64
    jobs = [JobInfo(7, "vm-web", "a", "RUNNING", ("n1",), comment=vm),
            JobInfo(8, "vm-db", "a", "PENDING", comment=vm),
            JobInfo(9, "vm-old", "a", "COMPLETED", comment=vm),
            JobInfo(10, "batch", "a", "RUNNING", ("n1",))]
    assert [v for v, _ in vm_candidates(jobs, "")] == ["web", "7", "db", "8"]
    assert vm_candidates(jobs, "w") == [("web", "job 7, running on n1")]
    assert vm_candidates(jobs, "8") == [("8", "VM db")]
