"""The real Debian guest with real cloud-init, through `slurm-vm submit` on the test cluster (slow)."""

from __future__ import annotations

import os
import pwd
import subprocess

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.guest, pytest.mark.slow]
ADDRESS = "10.77.0.20"


def spec(key: str) -> str:
    return f"""name: deb
image: debian
cpus: 1
memory: 512M
time: "15:00"
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
        both = vc.slurm_vm("exec", "deb", "--stdin", "--", "sh", "-c", "tr a-z A-Z; echo to-stderr >&2; exit 5",
                           input="from stdin\n", timeout=120)
        assert (both.returncode, both.stdout, both.stderr) == (5, "FROM STDIN\n", "to-stderr\n"), both
    except BaseException:
        vc.cluster.client(["scancel", str(job)])   # a failed check must not leave the VM holding a node
        raise
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
