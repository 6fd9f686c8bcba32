"""The real Debian guest with real cloud-init, through `slurm-vm submit` on the test cluster (slow)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.guest, pytest.mark.slow]
ADDRESS = "10.77.0.20"


def spec(key: str) -> str:
    return f"""name: deb
image: debian
cpus: 1
memory: 512M
time: "15:00"
on_preempt: checkpoint
networks:
  - network: lan
    address: {ADDRESS}/24
cloud_init:
  hostname: debhost
  user_data: |
    #cloud-config
    users:
      - name: alice
        shell: /bin/bash
        sudo: ALL=(ALL) NOPASSWD:ALL
        ssh_authorized_keys: ["{key}"]
    runcmd:
      - echo CLOUD-INIT-RUNCMD-DONE > /dev/console
"""


def test_debian_guest_with_cloud_init_and_ssh(vm_cluster):
    """submit --wait returns when cloud-init has finished (no --wait-for); `slurm-vm ssh` from the login side
    (where the VM's network is not routed) jumps through the VM's node."""
    vc = vm_cluster
    if "debian" not in open(vc.config_path).read():
        pytest.skip("the Debian test guest is not built: scripts/build-test-guests --only debian")
    keys = os.path.join(vc.directory, "keys")
    os.makedirs(keys, exist_ok=True)
    key = os.path.join(keys, "id")
    if os.path.exists(key):
        os.unlink(key)
        os.unlink(key + ".pub")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    user = pwd.getpwnam("svmtest")
    for path in (keys, key, key + ".pub"):
        os.chown(path, user.pw_uid, user.pw_gid)
    spec_path = os.path.join(vc.directory, "specs", "deb.yaml")
    with open(spec_path, "w") as fh:
        fh.write(spec(open(key + ".pub").read().strip()))
    os.chmod(spec_path, 0o644)
    submitted = vc.slurm_vm("submit", "--parsable", "--wait", "--timeout", "400", spec_path,
                            f"--output={vc.directory}/out/%j.out", timeout=420)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job = int(submitted.stdout.split()[0])
    node = vc.job_field(job, "%N")
    try:
        assert "SLURM-VM-GUEST-READY" in vc.serial_log(node, job)
        ssh = vc.slurm_vm("ssh", "-l", "alice", "deb", "-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                          "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20",
                          "hostname; id -un; cloud-init status; sudo -n true && echo SUDO-OK", timeout=120)
        assert ssh.returncode == 0, (ssh.stderr, vc.serial_log(node, job)[-3000:])
        lines = ssh.stdout.split()
        assert lines[0] == "debhost" and lines[1] == "alice", ssh.stdout
        assert "status: done" in ssh.stdout and "SUDO-OK" in ssh.stdout, ssh.stdout   # done when --wait returned
        assert "CLOUD-INIT-RUNCMD-DONE" in vc.serial_log(node, job)
        copied = vc.slurm_vm("scp", "-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                             "-o", "UserKnownHostsFile=/dev/null", "alice@deb:/etc/hostname", os.path.join(keys, "got"),
                             timeout=120)
        assert copied.returncode == 0, copied.stderr
        assert open(os.path.join(keys, "got")).read().strip() == "debhost"

        # exec through the guest agent (qemu-guest-agent in the Debian guest), no ssh key involved
        release = vc.slurm_vm("exec", "deb", "--", "cat", "/etc/os-release", timeout=120)
        assert release.returncode == 0, release.stderr
        assert 'ID=debian' in release.stdout and "VERSION_CODENAME=bookworm" in release.stdout, release.stdout
        failed = vc.slurm_vm("exec", str(job), "--", "false", timeout=120)
        assert (failed.returncode, failed.stdout, failed.stderr) == (1, "", ""), failed
        status = vc.slurm_vm("status", "deb")
        assert f"Guest says:  {ADDRESS}/24" in status.stdout and "(reported by the guest)" in status.stdout, status
        both = vc.slurm_vm("exec", "deb", "--stdin", "--", "sh", "-c", "tr a-z A-Z; echo to-stderr >&2; exit 5",
                           input="from stdin\n", timeout=120)
        assert (both.returncode, both.stdout, both.stderr) == (5, "FROM STDIN\n", "to-stderr\n"), both
    except BaseException:
        vc.cluster.client(["scancel", str(job)])   # a failed check must not leave the VM holding a node
        raise
    consistent_checkpoint_while_writing(vc, job)

    # The guest ignores the ACPI power button from now on: `stop` still ends it, through the guest agent, within
    # the grace time (no hard stop: the job ends COMPLETED).
    ignore = vc.slurm_vm("exec", "deb", "--", "sh", "-c",
                         "mkdir -p /etc/systemd/logind.conf.d && printf '[Login]\\nHandlePowerKey=ignore\\n' "
                         "> /etc/systemd/logind.conf.d/ignore.conf && systemctl restart systemd-logind", timeout=120)
    assert ignore.returncode == 0, ignore
    stop = vc.slurm_vm("stop", "deb")
    assert stop.returncode == 0, stop.stderr
    state = vc.wait_gone_or_ended(job, timeout=120)
    output = vc.output(job)
    assert state == "COMPLETED", output[-3000:]
    assert "asked its guest agent to power off" in output and "hard-stopped" not in output, output[-3000:]
    vc.wait_no_leaks(job)


def consistent_checkpoint_while_writing(vc, job: int) -> None:
    """A checkpoint (--stop) taken while the guest appends to a file without pause: the agent froze the guest's
    filesystems first (the manifest says so), the saved disk passes `e2fsck -n` (no journal to replay, no
    error), and the restored guest is thawed: it writes again."""
    writer = vc.slurm_vm("exec", "deb", "--", "sh", "-c", "setsid sh -c 'while :; do date +%s%N >> /var/tmp/w.log; "
                         "done' </dev/null >/dev/null 2>&1 &", timeout=120)
    assert writer.returncode == 0, writer
    time.sleep(2)
    saved = vc.slurm_vm("checkpoint", "deb", "--stop", timeout=900)
    assert saved.returncode == 0, saved.stdout + saved.stderr + vc.output(job)[-3000:]
    vc.wait_state(job, {"PENDING"}, timeout=120)
    assert "froze the guest's filesystems through its agent" in vc.output(job), vc.output(job)[-3000:]
    jdir = os.path.join(vc.directory, "checkpoints", "svmtest", f"job-{job}")
    (ckpt,) = [os.path.join(jdir, n) for n in os.listdir(jdir) if n.startswith("ckpt-")]
    with open(os.path.join(ckpt, "manifest.json")) as fh:
        assert json.load(fh)["guest_frozen"] is True
    raw = os.path.join(vc.directory, f"fsck-{job}.raw")
    try:
        subprocess.run(["qemu-img", "convert", "-O", "raw", os.path.join(ckpt, "overlay.qcow2"), raw], check=True,
                       timeout=300)
        fsck = subprocess.run(["e2fsck", "-n", "-f", raw], capture_output=True, text=True, timeout=300)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    finally:
        if os.path.exists(raw):
            os.unlink(raw)
    assert vc.cluster.client(["scontrol", "release", str(job)], user="svmtest").returncode == 0
    deadline = time.monotonic() + 300
    while "thawed the restored guest's filesystems" not in vc.output(job):
        assert time.monotonic() < deadline, vc.output(job)[-3000:]
        time.sleep(1)
    after = vc.slurm_vm("exec", "deb", "--timeout", "60", "--", "sh", "-c",
                        "echo written-after > /root/after && cat /root/after && tail -c 200 /var/tmp/w.log | wc -l",
                        timeout=180)
    assert after.returncode == 0 and after.stdout.startswith("written-after\n"), after
    stopped = vc.slurm_vm("exec", "deb", "--", "pkill", "-f", "while :; d[o]", timeout=120)   # [o]: not pkill's own
    assert stopped.returncode == 0, stopped
