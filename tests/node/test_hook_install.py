"""The node hook installed as a site installs it: under any name, in a prolog.d directory, outside its venv.

Root tests with the real hooks on a fake node (tests/fixtures/hooknode.py). A job that is not a VM job must never
fail because slurm-vm's venv, Python or config is broken (Slurm would drain the node); a VM job fails with the
reason in one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from devtools.hooknode import SPEC, VENV_BIN
from slurm_vm.node.configcache import CACHE_ROOT, STATE_DIR_SUFFIX

ENTRY = os.path.join(VENV_BIN, "slurm-vm-prolog")


def run(node, path: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net=/run/netns/{node.netns}", path, *args], env=env,
                          capture_output=True, text=True, timeout=120)


def slurmd_env(node, job: int, hook: str, spec: str | None = None) -> dict[str, str]:
    """What slurmd gives a hook: no SLURM_VM_CONFIG (the installed hook knows its config)."""
    env = node.env(job, spec)
    del env["SLURM_VM_CONFIG"]
    if spec is None:
        env.pop("SLURM_JOB_COMMENT", None)
    env["SLURM_SCRIPT_CONTEXT"] = f"{hook}_slurmd"
    return env


def install(node, dest: str, venv: str | None = None) -> None:
    args = [os.path.join(VENV_BIN, "slurm-vm"), "node", "install-hook", dest, "--config", node.config_path]
    proc = subprocess.run([*args, *(["--venv", venv] if venv is not None else [])], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


def forget_hint(node) -> None:
    """As after a reboot: /run is a tmpfs."""
    try:
        os.unlink(CACHE_ROOT + node.config_path + STATE_DIR_SUFFIX)
    except FileNotFoundError:
        pass


def prolog_d(node) -> tuple[str, str]:
    """sbin/slurm-vm-hook, linked as prolog.d/50-slurm-vm and epilog.d/50-slurm-vm."""
    for sub in ("sbin", "prolog.d", "epilog.d"):
        os.makedirs(os.path.join(node.tmp, sub), exist_ok=True)
    hook = os.path.join(node.tmp, "sbin", "slurm-vm-hook")
    links = tuple(os.path.join(node.tmp, sub, "50-slurm-vm") for sub in ("prolog.d", "epilog.d"))
    for link in links:
        os.symlink(hook, link)
    return hook, links[0], links[1]


def test_linked_into_prolog_d_under_another_name_runs_a_vm_job(hook_node):
    node = hook_node
    hook, prolog, epilog = prolog_d(node)
    install(node, hook)
    proc = run(node, prolog, slurmd_env(node, 401, "prolog", SPEC))
    assert proc.returncode == 0, proc.stderr
    assert os.path.isdir(os.path.join(node.state, "jobs", "401"))
    proc = run(node, epilog, slurmd_env(node, 401, "epilog", SPEC))
    assert proc.returncode == 0, proc.stderr
    assert node.leftovers(401) == []
    for which, path in (("prolog", prolog), ("epilog", epilog)):
        assert run(node, path, slurmd_env(node, 402, which)).returncode == 0


def test_role_from_an_argument(hook_node):
    node = hook_node
    hook = os.path.join(node.tmp, "any-name")
    install(node, hook)
    env = slurmd_env(node, 403, "prolog", SPEC)
    del env["SLURM_SCRIPT_CONTEXT"]
    assert run(node, hook, env, "prolog").returncode == 0
    assert os.path.isdir(os.path.join(node.state, "jobs", "403"))
    proc = run(node, hook, env, "epilog")
    assert proc.returncode == 0, proc.stderr
    assert node.leftovers(403) == []


def test_refuses_to_be_a_slurmctld_prolog(hook_node):
    node = hook_node
    hook = os.path.join(node.tmp, "any-name")
    install(node, hook)
    env = {**slurmd_env(node, 404, "prolog"), "SLURM_SCRIPT_CONTEXT": "prolog_slurmctld"}
    proc = run(node, hook, env)
    assert proc.returncode == 1 and "slurmd's Prolog= and Epilog= only" in proc.stderr


@pytest.mark.parametrize("broken", ["venv-removed", "venv-without-slurm-vm", "venv-python-dangling"])
def test_broken_venv_fails_vm_jobs_only(hook_node, broken):
    node = hook_node
    venv = os.path.join(node.tmp, "venv")
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    hook, prolog, epilog = prolog_d(node)
    install(node, hook, venv=venv)
    if broken == "venv-removed":
        shutil.rmtree(venv)
    elif broken == "venv-python-dangling":
        for name in ("python", "python3"):
            os.unlink(os.path.join(venv, "bin", name))
            os.symlink("/usr/bin/python3.0-removed", os.path.join(venv, "bin", name))
    forget_hint(node)
    for which, path in (("prolog", prolog), ("epilog", epilog)):
        proc = run(node, path, slurmd_env(node, 405, which))
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.count("\n") == 1 and "not a VM job: it goes on" in proc.stderr, proc.stderr
    proc = run(node, prolog, slurmd_env(node, 406, "prolog", SPEC))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "job 406" in proc.stderr, proc.stderr
    assert ("is missing or broken" if broken != "venv-without-slurm-vm" else "cannot import slurm_vm") in proc.stderr
    assert not os.path.exists(os.path.join(node.state, "jobs", "406"))


def test_plain_copy_falls_back_to_the_system_python(hook_node):
    """Copied (not linked, not installed with install-hook): no venv known, /usr/bin/python3 lacks slurm_vm."""
    node = hook_node
    copy = os.path.join(node.tmp, "50-slurm-vm")
    shutil.copy(ENTRY, copy)
    env = {**slurmd_env(node, 407, "prolog"), "SLURM_VM_CONFIG": node.config_path}
    proc = run(node, copy, env)
    assert proc.returncode == 0 and "/usr/bin/python3 cannot import slurm_vm" in proc.stderr, proc.stderr
    assert "not a VM job: it goes on" in proc.stderr
    proc = run(node, copy, {**slurmd_env(node, 408, "prolog", SPEC), "SLURM_VM_CONFIG": node.config_path})
    assert proc.returncode == 1 and "cannot import slurm_vm" in proc.stderr
    assert "not a VM job" not in proc.stderr


def test_state_held_here_with_a_broken_venv_fails(hook_node):
    """The node holds a job's state (its comment changed): cleanup cannot run, so the hook must not say 0."""
    node = hook_node
    assert node.prolog(409, SPEC).returncode == 0
    hook, _, epilog = prolog_d(node)
    install(node, hook, venv=os.path.join(node.tmp, "gone"))
    proc = run(node, epilog, slurmd_env(node, 409, "epilog"))
    assert proc.returncode == 1 and "is missing or broken" in proc.stderr
    assert node.epilog(409, SPEC).returncode == 0
    assert node.leftovers(409) == []


@pytest.mark.parametrize("policy", ["fail-job", "drain-node"])
def test_missing_bridge_fails_the_job_not_the_node(hook_node, policy):
    """The node lacks a network's bridge: the job fails with one line naming it; the health check drains."""
    node = hook_node
    node.write_config({"user_errors": policy,
                       "networks": {"lan": {"kind": "bridge", "bridge": "br-missing"}}})
    proc = node.prolog(410, SPEC)
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(node.state, "jobs", "410.error")) as fh:
        note = fh.read()
    assert note.count("\n") == 1 and "bridge 'br-missing' does not exist on node" in note, note
    assert "slurm-vm node check" in note
    assert node.epilog(410, SPEC).returncode == 0
    assert node.leftovers(410) == []
