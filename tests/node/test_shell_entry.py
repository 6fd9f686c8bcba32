"""The shell entry (bin/slurm-vm-prolog): Python only for VM work, and cleanup whatever the comment says now.

Real hooks as root in a network namespace (tests/fixtures/hooknode.py); the entry is the installed copy
in the venv, as slurm.conf names it.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import time

import pytest

from devtools.hooknode import SPEC, VENV_BIN
from slurm_vm.node.configcache import CACHE_ROOT, STATE_DIR_SUFFIX

pytestmark = pytest.mark.root
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def plain_env(node, job):
    env = node.env(job, None)
    env.pop("SLURM_JOB_COMMENT", None)
    return env


def hint_path(node) -> str:
    return CACHE_ROOT + node.config_path + STATE_DIR_SUFFIX


def break_config_quietly(node) -> None:
    """Garbage in the config, its mtime left older than the hint: only Python would notice (and say so)."""
    st = os.stat(node.config_path)
    with open(node.config_path, "w") as fh:
        fh.write("images: [\n")
    os.utime(node.config_path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_installed_entries_are_the_repository_ones():
    for name in ("slurm-vm-prolog", "slurm-vm-epilog"):
        assert filecmp.cmp(os.path.join(REPO, "bin", "slurm-vm-prolog"), os.path.join(VENV_BIN, name),
                           shallow=False), f"reinstall: pip install -e . ({name} is stale)"


def test_first_plain_job_writes_the_hint_then_no_python(hook_node):
    node = hook_node
    assert not os.path.exists(hint_path(node))
    proc = node.hook("epilog", plain_env(node, 301))
    assert (proc.returncode, proc.stderr) == (0, "")
    with open(hint_path(node)) as fh:
        assert fh.read() == node.state + "\n"
    assert os.stat(hint_path(node)).st_mode & 0o777 == 0o600
    break_config_quietly(node)
    for which in ("prolog", "epilog"):
        proc = node.hook(which, plain_env(node, 302))
        assert (proc.returncode, proc.stderr) == (0, ""), "Python ran for a job that is not a VM job"


def test_a_newer_config_starts_python_which_does_not_fail_plain_jobs(hook_node):
    node = hook_node
    assert node.hook("prolog", plain_env(node, 303)).returncode == 0
    time.sleep(0.01)
    with open(node.config_path, "w") as fh:
        fh.write("images: [\n")
    proc = node.hook("epilog", plain_env(node, 303))
    assert proc.returncode == 0
    assert "config" in proc.stderr and "not a VM job" in proc.stderr


@pytest.mark.parametrize("hint", [True, False], ids=["hint", "no-hint"])
def test_epilog_cleans_a_vm_job_whose_comment_changed(hook_node, hint):
    node = hook_node
    assert node.prolog(310, SPEC).returncode == 0
    assert node.leftovers(310)
    if not hint:
        os.unlink(hint_path(node))
    proc = node.hook("epilog", plain_env(node, 310))
    assert proc.returncode == 0, proc.stderr
    assert "holds its state" in proc.stderr
    assert node.leftovers(310) == []


def test_other_comment_after_a_crash_leaves_nothing(hook_node):
    """A prolog killed mid-way, then the job's comment no longer names a VM: the epilog still cleans up."""
    node = hook_node
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{node.netns}", os.path.join(VENV_BIN, "slurm-vm-prolog")],
                            env=node.env(311, SPEC), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    journal = os.path.join(node.state, "journal", "311.jsonl")
    while not os.path.exists(journal) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()
    proc.wait(timeout=30)
    env = plain_env(node, 311)
    env["SLURM_JOB_COMMENT"] = "just a note"
    assert node.hook("epilog", env).returncode == 0
    assert node.leftovers(311) == []


def test_node_name_in_state_dir(hook_node):
    node = hook_node
    node.write_config({"state_dir": os.path.join(node.tmp, "state-%n")})
    assert node.prolog(312, SPEC).returncode == 0
    assert os.path.isdir(os.path.join(node.tmp, "state-node1", "jobs", "312"))
    with open(hint_path(node)) as fh:
        assert fh.read() == os.path.join(node.tmp, "state-%n") + "\n"
    proc = node.hook("epilog", plain_env(node, 312))
    assert proc.returncode == 0 and "holds its state" in proc.stderr
    assert not os.path.exists(os.path.join(node.tmp, "state-node1", "jobs", "312"))


def test_entry_through_a_symlink_finds_its_venv(hook_node, tmp_path):
    node = hook_node
    link_dir = os.path.join(node.tmp, "usr-local-bin")
    os.mkdir(link_dir)
    os.symlink(os.path.join(VENV_BIN, "slurm-vm-epilog"), os.path.join(link_dir, "slurm-vm-epilog"))
    assert node.prolog(313, SPEC).returncode == 0
    proc = subprocess.run(["nsenter", f"--net=/run/netns/{node.netns}", os.path.join(link_dir, "slurm-vm-epilog")],
                          env={**node.env(313, SPEC), "SLURM_SCRIPT_CONTEXT": "epilog_slurmd"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert node.leftovers(313) == []


def test_entry_under_another_name_by_hand_refuses(tmp_path):
    """Outside slurmd (no SLURM_SCRIPT_CONTEXT), no argument and a name without prolog/epilog: it cannot tell."""
    other = tmp_path / "hook"
    shutil.copy(os.path.join(VENV_BIN, "slurm-vm-prolog"), other)
    proc = subprocess.run([str(other)], capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1 and "cannot tell prolog from epilog" in proc.stderr
