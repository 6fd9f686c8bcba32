"""The README's first command (the main job) is run here, so it cannot rot."""

from __future__ import annotations

import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.cluster, pytest.mark.guest]


def test_readme_commands_are_the_scripts():
    readme = open(os.path.join(REPO, "README.md")).read()
    assert "scripts/demo" in readme and "scripts/run-tests" in readme
    assert "scripts/run-tests" in open(os.path.join(REPO, ".ci", "run")).read()


def test_demo_runs_a_vm_through_slurm_and_cleans_up():
    if os.geteuid() != 0:
        pytest.skip("the demo needs root")
    if os.environ.get("SLURM_VM_TEST_SLURM", "22.05") != "22.05":
        pytest.skip("the demo runs on the 22.05 flavour")
    proc = subprocess.run([os.path.join(REPO, "scripts", "demo")], capture_output=True, text=True, timeout=900,
                          cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for expected in ("Submitted VM tiny as job", "VM tiny is ready on", "RUNNING", "SLURM-VM-TEST ready",
                     " 0% packet loss", "asked VM tiny", ": COMPLETED", "SLURM-VM-TEST acpi-shutdown",
                     "tearing the cluster down"):
        assert expected in out, (expected, out[-4000:])
    name = os.environ.get("SLURM_VM_TEST_PREFIX", "") + "demo"
    assert not os.path.exists(f"/var/lib/slurm-vm-testcluster/{name}")
