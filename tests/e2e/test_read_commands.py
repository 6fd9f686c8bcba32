"""`list`, `status`, `console`, `ssh`, `stop` on the edge cases a new user meets, through real Slurm daemons.

Held jobs stay PENDING and never start a guest, so no VM boots here: every case is about what Slurm says.
User svmother starts with no jobs; svmtest's jobs are "another user's" to it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest

from devtools.demo import try_commands
from devtools.vmcluster import REPO, venv_dir

from slurm_vm.errors import EXIT_AMBIGUOUS, EXIT_NOT_FOUND, EXIT_NOT_RUNNING, EXIT_NOT_YOURS

pytestmark = [pytest.mark.cluster, pytest.mark.both_flavours]   # squeue/scontrol output, job states

USER = "svmother"
SPEC = "name: {name}\nimage: tiny\nmemory: 256M\nnetworks:\n  - network: lan\n"
READ_COMMANDS = (("list",), ("status", "{ref}"), ("console", "{ref}"), ("ssh", "{ref}"), ("stop", "{ref}"))


def submit_held(vc, name: str, user: str = USER) -> int:
    path = os.path.join(vc.directory, "specs", f"{name}-{time.monotonic_ns()}.yaml")
    with open(path, "w") as fh:
        fh.write(SPEC.format(name=name))
    os.chmod(path, 0o644)
    proc = vc.slurm_vm("submit", "--parsable", path, "--hold", f"--output={vc.directory}/out/%j.out", user=user)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip())


def run(vc, *args: str, user: str = USER):
    proc = vc.slurm_vm(*args, user=user)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 1, proc.stderr
    return proc


def test_read_commands_on_every_edge_case(vm_cluster):
    vc = vm_cluster
    # No jobs at all: list says so in one line; every per-VM command says "no VM named".
    listing = run(vc, "list")
    assert listing.returncode == 0 and "no running or pending VMs of user svmother" in listing.stdout, listing
    assert json.loads(run(vc, "list", "--json").stdout) == []
    for command in ("status", "console", "ssh", "stop"):
        proc = run(vc, command, "web")
        assert proc.returncode == EXIT_NOT_FOUND and "no VM named 'web' for user svmother" in proc.stderr, proc

    # Only pending jobs: list shows the reason; status works; console and ssh say it is pending.
    pending = submit_held(vc, "web")
    listing = run(vc, "list")
    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.splitlines()
    assert row.split()[:3] == ["web", str(pending), "PENDING"] and "JobHeld" in row, listing.stdout
    status = run(vc, "status", "web", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "PENDING", status
    for command in ("console", "ssh"):
        proc = run(vc, command, "web")
        assert proc.returncode == EXIT_NOT_RUNNING, proc
        assert "VM web is pending (reason: JobHeld" in proc.stderr, proc.stderr

    # A name that matches two jobs: refused with both job ids; the job id works.
    second = submit_held(vc, "web")
    for command in ("status", "console", "ssh", "stop"):
        proc = run(vc, command, "web")
        assert proc.returncode == EXIT_AMBIGUOUS, proc
        assert f"matches jobs {pending} (PENDING), {second} (PENDING)" in proc.stderr, proc.stderr
    assert run(vc, "status", str(second)).returncode == 0

    # Stopping pending jobs cancels them; then only ended jobs are left.
    for job in (pending, second):
        proc = run(vc, "stop", str(job))
        assert proc.returncode == 0 and f"cancelled job {job}" in proc.stdout, proc
        vc.wait_gone_or_ended(job, timeout=30)
    listing = run(vc, "list")
    assert listing.returncode == 0 and "no running or pending VMs" in listing.stdout, listing.stdout
    ended = json.loads(run(vc, "list", "--ended", "--json").stdout)
    listed = {(r["job_id"], r["state"]) for r in ended}   # other tests' ended jobs of this user may be there too
    assert {(pending, "CANCELLED"), (second, "CANCELLED")} <= listed, listed
    assert all(state not in ("PENDING", "RUNNING") for _, state in listed), listed
    status = run(vc, "status", "web")
    assert status.returncode == 0 and "CANCELLED" in status.stdout and str(second) in status.stdout, status
    for command in ("console", "ssh", "stop"):
        proc = run(vc, command, "web")
        assert proc.returncode == EXIT_NOT_RUNNING and "has ended (CANCELLED)" in proc.stderr, proc

    # Another user's job id: refused in one line before Slurm's own permission error.
    theirs = submit_held(vc, "theirs", user="svmtest")
    try:
        for command in ("status", "console", "ssh", "stop"):
            proc = run(vc, command, str(theirs))
            assert proc.returncode == EXIT_NOT_YOURS, proc
            assert f"job {theirs} is VM theirs of user svmtest: not your VM" in proc.stderr, proc.stderr
        assert vc.job_field(theirs, "%T") == "PENDING"
    finally:
        vc.cluster.client(["scancel", str(theirs)])

    # A job that is not a VM job.
    wrap = vc.cluster.client(["sbatch", "--parsable", "--hold", "-o", "/dev/null", "--wrap", "true"], user=USER)
    assert wrap.returncode == 0, wrap.stderr
    wrap_id = int(wrap.stdout.strip().split(";")[0])
    try:
        for command in ("status", "console", "ssh", "stop"):
            proc = run(vc, command, str(wrap_id))
            assert proc.returncode == EXIT_NOT_FOUND and f"job {wrap_id} (wrap) is not a slurm-vm job" in proc.stderr, \
                proc
        proc = run(vc, "status", "999999")
        assert proc.returncode == EXIT_NOT_FOUND and "no job 999999 known to Slurm" in proc.stderr, proc
    finally:
        vc.cluster.client(["scancel", str(wrap_id)])


def _testcluster(vc, cwd: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(REPO, "scripts", "testcluster"), "client", "--name", vc.cluster.name,
                           "--user", "svmtest", "--", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "SLURM_VM_VENV": venv_dir()})


def _wrap_output(vc, cwd: str) -> str:
    proc = _testcluster(vc, cwd, "sbatch", "--parsable", "--wrap", "pwd")
    assert proc.returncode == 0, proc.stderr
    job = int(proc.stdout.strip().split(";")[0])
    assert vc.wait_gone_or_ended(job, timeout=60) == "COMPLETED"
    return job


def test_testcluster_client_runs_in_the_callers_dir_or_the_users_home(vm_cluster, tmp_path):
    vc = vm_cluster
    here = tempfile.mkdtemp(prefix="svm-client-")
    try:
        os.chown(here, pwd.getpwnam("svmtest").pw_uid, -1)
        job = _wrap_output(vc, here)
        with open(os.path.join(here, f"slurm-{job}.out")) as fh:
            assert fh.read().strip() == here
        # Not writable by svmtest (root's 0755 dir): the user's home.
        os.chown(here, 0, -1)
        job = _wrap_output(vc, here)
        home = pwd.getpwnam("svmtest").pw_dir
        out = os.path.join(home, f"slurm-{job}.out")
        with open(out) as fh:
            assert fh.read().strip() == home
        os.unlink(out)
    finally:
        shutil.rmtree(here)


def test_the_demos_try_commands_work_pasted(vm_cluster):
    """The lines `scripts/demo --keep` prints, for this cluster: `slurm-vm` and its config need no setup."""
    vc = vm_cluster
    lines = try_commands(vc.cluster.name)
    assert lines[0].split()[0] == os.path.join(REPO, "scripts", "testcluster") or "SLURM_VM_VENV=" in lines[0]
    assert all(f"--name {vc.cluster.name}" in line for line in lines)
    proc = subprocess.run(["sh", "-c", lines[0]], cwd="/", capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith("NAME") or "running or pending VMs" in proc.stdout, proc.stdout


def test_user_doctor_images_and_networks_on_the_cluster(vm_cluster):
    vc = vm_cluster
    job = submit_held(vc, "doc", user="svmtest")
    try:
        proc = run(vc, "doctor", "--json", user="svmtest")
        report = json.loads(proc.stdout)
        assert proc.returncode == 0 and report["ok"], proc.stdout
        assert job in [v["job_id"] for v in report["vms"]]
        assert {i["name"] for i in report["images"]} >= {"tiny", "tiny-noacpi"}
        assert [n["name"] for n in report["networks"]] == ["direct", "lan", "lan-open", "managed", "pair", "private",
                                                             "uni"]   # sorted, all usable
        text = run(vc, "doctor", user="svmtest").stdout
        assert "ok    slurmctld: answers" in text and "Your VMs:" in text, text
        images = json.loads(run(vc, "images", "--json", user="svmtest").stdout)
        assert next(i for i in images if i["name"] == "tiny")["size_bytes"] == 64 << 20
    finally:
        vc.cluster.client(["scancel", str(job)])
