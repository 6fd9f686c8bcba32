"""Host directories in the tiny guest through Slurm with virtio-fs (`mounts.transport: virtiofs`).

The cluster's admin config picks virtio-fs, so the launcher starts one virtiofsd per share, as the job
user inside a user namespace, in the job's cgroup. The checks are typed into the guest's serial shell
(its root). scancel and the time limit must end the job with no virtiofsd or QEMU left on the node.
"""

from __future__ import annotations

import os
import pwd
import signal

import pytest

from tests.e2e.test_shares import USER, make_dirs
from tests.e2e.test_vm_jobs import node_of, tiny

pytestmark = [
    pytest.mark.cluster, pytest.mark.guest,
    # Debian 12's C virtiofsd ships in its QEMU package; trixie moved to the Rust virtiofsd (its own package,
    # another command line), which the 24.11 test rootfs does not have: virtiofs is verified on 22.05 only.
    pytest.mark.skipif(os.environ.get("SLURM_VM_TEST_SLURM", "22.05") != "22.05",
                       reason="virtiofs through Slurm is verified with Debian 12's virtiofsd (22.05 flavour) only"),
]


def mounts_spec(name: str, data: str, ro: str) -> str:
    return tiny(name) + (f"mounts:\n  - {{source: {data}, target: /mnt/data}}\n"
                         f"  - {{source: {ro}, target: /mnt/ro, readonly: true}}\n")


def job_dir(vc, node: str, job: int) -> str:
    return os.path.join(vc.node_state(node), "jobs", str(job))


def share_daemons(vc, node: str, job: int) -> dict[int, str]:
    """The virtiofsd processes serving this job: pid -> its socket (in the job dir). virtiofsd forks once
    for its sandbox (a new pid namespace), so each share has two."""
    pids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        sockets = [a.decode() for a in argv if a.startswith(b"--socket-path=" + job_dir(vc, node, job).encode())]
        if argv and argv[0].endswith(b"virtiofsd") and sockets:
            pids[int(entry)] = sockets[0]
    return pids


def proc_field(pid: int | str, name: str) -> str:
    with open(f"/proc/{pid}/status") as fh:
        return next(line for line in fh if line.startswith(name + ":")).split(":", 1)[1].strip()


def vmm_threads(vc, node: str, job: int) -> dict[str, str]:
    """QEMU's threads: name ("main" for the process's first thread) -> Cpus_allowed_list."""
    with open(os.path.join(job_dir(vc, node, job), "vmm.pid")) as fh:
        pid = int(fh.read().split()[0])
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as fh:
            name = "main" if tid == str(pid) else fh.read().strip()
        threads[name] = proc_field(f"{pid}/task/{tid}", "Cpus_allowed_list")
    return threads


def start_with_shares(vc, name: str, *sbatch: str) -> tuple[int, str, str, str]:
    data, ro = make_dirs(vc)
    job = vc.submit(mounts_spec(name, data, ro), *sbatch, name=name)
    vc.wait_state(job, {"RUNNING"}, timeout=180)
    node = node_of(vc, job)
    serial = vc.wait_serial(node, job, "SLURM-VM-TEST ready", timeout=300)
    assert "SLURM-VM-TEST mount-failed" not in serial, serial
    return job, node, data, ro


def test_virtiofs_share_has_the_users_rights_and_scancel_leaves_nothing(virtiofs_cluster):
    vc = virtiofs_cluster
    job, node, data, ro = start_with_shares(vc, "vfs-cancel")
    user = pwd.getpwnam(USER)

    daemons = share_daemons(vc, node, job)
    assert len(set(daemons.values())) == 2, (daemons, vc.output(job))
    for pid in daemons:
        # the job user's own uid, mapped as 0 in its user namespace; nothing else mapped
        assert proc_field(pid, "Uid").split()[0] == str(user.pw_uid)
        with open(f"/proc/{pid}/uid_map") as fh:
            assert fh.read().split() == ["0", str(user.pw_uid), "1"]
        with open(f"/proc/{pid}/cgroup") as fh:
            assert f"job_{job}" in fh.read()          # in the job's cgroup, counted and killed with it
    # one core, one vCPU: the daemons share the vCPU's core (they may not leave the job's cores)
    assert {proc_field(pid, "Cpus_allowed_list") for pid in daemons} == {vmm_threads(vc, node, job)["CPU 0/TCG"]}

    with vc.serial_console(node, job, timeout=120) as console:
        assert console.run("grep -c ' virtiofs ' /proc/mounts", timeout=120) == "2"
        assert console.run("cat /mnt/data/hello.txt") == "host-wrote-this"
        console.run("echo from-guest > /mnt/data/out.txt; chown 0:0 /mnt/data/out.txt")
        assert "Permission denied" in console.run("cat /mnt/data/secret/file")
        assert console.run("touch /mnt/ro/new 2>/dev/null || echo refused") == "refused"
        assert console.run("cat /mnt/ro/hello.txt") == "ro-ok"
        # typed by hand: a second mount of the same share by its tag
        tag = console.run("awk '$2 == \"/mnt/data\" {print $1}' /proc/mounts")
        assert tag.startswith("svm:"), tag
        console.run(f"mkdir -p /mnt/again && mount -t virtiofs {tag} /mnt/again")
        assert console.run("cat /mnt/again/out.txt") == "from-guest"

    out = os.path.join(data, "out.txt")
    with open(out) as fh:
        assert fh.read() == "from-guest\n"
    assert os.stat(out).st_uid == user.pw_uid                 # the guest root's chown changed nothing
    assert not os.path.exists(os.path.join(ro, "new"))

    vc.cluster.client(["scancel", str(job)], user=USER)
    assert vc.wait_gone_or_ended(job, timeout=90) == "CANCELLED", vc.output(job)
    assert "SLURM-VM-TEST acpi-shutdown" in vc.output(job), vc.output(job)
    vc.wait_no_leaks(job)


def test_virtiofs_share_time_limit_ends_timeout_and_leaves_nothing(virtiofs_cluster):
    vc = virtiofs_cluster
    # 3 minutes: slurm-vm asks for the warning grace + 60 s before the end and Slurm may send it up to 60 s
    # earlier still, so a 2-minute job can get it at its start, before the guest has booted
    job, node, data, ro = start_with_shares(vc, "vfs-limit", "--time=3", "--cpus-per-task=2")
    daemons = share_daemons(vc, node, job)
    assert len(set(daemons.values())) == 2
    # a core more than vCPUs: the daemons and QEMU's own threads take the spare one, the vCPU has its own
    threads = vmm_threads(vc, node, job)
    spare = threads["main"]
    assert spare in {"0", "1"} and threads["CPU 0/TCG"] in {"0", "1"} - {spare}, threads
    assert {proc_field(pid, "Cpus_allowed_list") for pid in daemons} == {spare}
    assert f"share daemon threads on core(s) {spare}\n" in vc.output(job), vc.output(job)
    state = vc.wait_gone_or_ended(job, timeout=300)
    out = vc.output(job)
    assert state == "TIMEOUT", out
    assert "the guest shut down after SIGUSR1" in out, out
    vc.wait_no_leaks(job)
    assert share_daemons(vc, node, job) == {}


@pytest.mark.parametrize("victim", ["vmm.pid", "launcher.pid"])
def test_killing_the_vmm_or_the_launcher_leaves_no_virtiofsd(virtiofs_cluster, victim):
    vc = virtiofs_cluster
    job, node, data, ro = start_with_shares(vc, "vfs-kill")
    assert len(set(share_daemons(vc, node, job).values())) == 2
    with open(os.path.join(job_dir(vc, node, job), victim)) as fh:
        os.kill(int(fh.read().split()[0]), signal.SIGKILL)
    vc.wait_gone_or_ended(job, timeout=120)
    vc.wait_no_leaks(job)
    assert share_daemons(vc, node, job) == {}
