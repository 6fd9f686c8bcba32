"""Host directories in the tiny guest through Slurm (`mounts:`, virtio-9p, the VMM as the job user).

The guest's checks run as its root from cloud-init runcmd and print markers on the serial console.
"""

from __future__ import annotations

import os
import pwd
import signal

import pytest

from tests.e2e.test_vm_jobs import node_of, tiny

pytestmark = [pytest.mark.cluster, pytest.mark.guest]
USER = "svmtest"

CHECKS = """cloud_init:
  user_data: |
    #cloud-config
    runcmd:
    - 'echo SLURM-VM-TEST read=$(cat /mnt/data/hello.txt)'
    - 'echo from-guest > /mnt/data/out.txt && echo SLURM-VM-TEST wrote'
    - 'chown 0:0 /mnt/data/out.txt; echo SLURM-VM-TEST chowned'
    - 'cat /mnt/data/secret/file || echo SLURM-VM-TEST secret-denied'
    - 'touch /mnt/ro/new || echo SLURM-VM-TEST ro-denied'
    - 'echo SLURM-VM-TEST ro-read=$(cat /mnt/ro/hello.txt)'
"""


def make_dirs(vc) -> tuple[str, str]:
    user = pwd.getpwnam(USER)
    base = os.path.join(vc.directory, "shares")
    data, ro = os.path.join(base, "data"), os.path.join(base, "ro")
    for path in (base, data, ro, os.path.join(data, "secret")):
        os.makedirs(path, exist_ok=True)
    os.chmod(base, 0o755)
    for path, text in ((os.path.join(data, "hello.txt"), "host-wrote-this"), (os.path.join(ro, "hello.txt"), "ro-ok")):
        with open(path, "w") as fh:
            fh.write(text + "\n")
    for path in (data, ro, os.path.join(data, "hello.txt"), os.path.join(ro, "hello.txt")):
        os.chown(path, user.pw_uid, user.pw_gid)
    secret = os.path.join(data, "secret")
    with open(os.path.join(secret, "file"), "w") as fh:
        fh.write("root only\n")
    os.chmod(secret, 0o700)                    # root's, inside the user's share
    return data, ro


def test_guest_reads_and_writes_with_the_users_rights_only(vm_cluster):
    vc = vm_cluster
    data, ro = make_dirs(vc)
    spec = tiny("shares") + f"mounts:\n  - {{source: {data}, target: /mnt/data}}\n" \
                            f"  - {{source: {ro}, target: /mnt/ro, readonly: true}}\n" + CHECKS
    job = vc.submit(spec, name="shares")
    vc.wait_state(job, {"RUNNING"}, timeout=120)
    node = node_of(vc, job)
    serial = vc.wait_serial(node, job, "SLURM-VM-TEST ready", timeout=180)
    assert "SLURM-VM-TEST mounted svm:" in serial, serial
    assert "SLURM-VM-TEST read=host-wrote-this" in serial
    assert "SLURM-VM-TEST wrote" in serial
    assert "SLURM-VM-TEST secret-denied" in serial and "root only" not in serial
    assert "SLURM-VM-TEST ro-denied" in serial and "SLURM-VM-TEST ro-read=ro-ok" in serial
    out = os.path.join(data, "out.txt")
    st = os.stat(out)
    assert open(out).read() == "from-guest\n"
    assert st.st_uid == pwd.getpwnam(USER).pw_uid          # the guest's chown to root changed nothing
    assert not os.path.exists(os.path.join(ro, "new"))
    # killing the VMM ends the job and leaves no VMM or share daemon behind
    with open(os.path.join(vc.node_state(node), "jobs", str(job), "vmm.pid")) as fh:
        os.kill(int(fh.read().split()[0]), signal.SIGKILL)
    vc.wait_gone_or_ended(job, timeout=90)
    vc.wait_no_leaks(job)


@pytest.mark.parametrize("source,target,field", [
    ("/etc", "/mnt/etc", "mounts[0].source"),
    ("/home/svmother", "/mnt/other", "mounts[0].source"),
    ("/var/tmp", "/mnt/tmp", "mounts[0].source"),
    ("$HOME", "/etc", "mounts[0].target"),
])
def test_bad_mounts_are_refused_before_anything_starts(vm_cluster, source, target, field):
    vc = vm_cluster
    path = os.path.join(vc.directory, "specs", "badmount.yaml")
    with open(path, "w") as fh:
        fh.write(tiny("badmount") + f"mounts:\n  - {{source: '{source}', target: '{target}'}}\n")
    os.chmod(path, 0o644)
    before = vc.cluster.client(["squeue", "-h", "-o", "%i"]).stdout.split()
    proc = vc.slurm_vm("submit", path)
    assert proc.returncode != 0 and field in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert vc.cluster.client(["squeue", "-h", "-o", "%i"]).stdout.split() == before
    vc.wait_no_leaks()


def start_with_9p_shares(vc, name: str, *sbatch: str) -> tuple[int, str]:
    data, ro = make_dirs(vc)
    spec = tiny(name) + f"mounts:\n  - {{source: {data}, target: /mnt/data}}\n" \
                        f"  - {{source: {ro}, target: /mnt/ro, readonly: true}}\n"
    job = vc.submit(spec, *sbatch, name=name)
    vc.wait_state(job, {"RUNNING"}, timeout=180)
    node = node_of(vc, job)
    serial = vc.wait_serial(node, job, "SLURM-VM-TEST ready", timeout=300)
    assert serial.count("SLURM-VM-TEST mounted svm:") == 2, serial
    return job, node


def test_scancel_with_9p_shares_leaves_nothing(vm_cluster):
    vc = vm_cluster
    job, node = start_with_9p_shares(vc, "shares-cancel")
    vc.cluster.client(["scancel", str(job)], user=USER)
    assert vc.wait_gone_or_ended(job, timeout=90) == "CANCELLED", vc.output(job)
    assert "SLURM-VM-TEST acpi-shutdown" in vc.output(job), vc.output(job)
    vc.wait_no_leaks(job)


def test_time_limit_with_9p_shares_ends_timeout_and_leaves_nothing(vm_cluster):
    vc = vm_cluster
    # 3 minutes: slurm-vm asks for the warning grace + 60 s before the end and Slurm may send it up to 60 s
    # earlier still, so a 2-minute job can get it at its start, before the guest has booted
    job, node = start_with_9p_shares(vc, "shares-limit", "--time=3")
    state = vc.wait_gone_or_ended(job, timeout=300)
    out = vc.output(job)
    assert state == "TIMEOUT", out
    assert "the guest shut down after SIGUSR1" in out, out
    vc.wait_no_leaks(job)
