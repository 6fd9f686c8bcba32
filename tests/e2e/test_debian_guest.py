"""The real Debian guest with real cloud-init, through `slurm-vm submit` on the test cluster (slow)."""

from __future__ import annotations

import os
import subprocess
import tempfile
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
    vc = vm_cluster
    if "debian" not in open(vc.config_path).read():
        pytest.skip("the Debian test guest is not built: scripts/build-test-guests --only debian")
    with tempfile.TemporaryDirectory() as tmp:
        key = os.path.join(tmp, "id")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        job = vc.submit(spec(open(key + ".pub").read().strip()), name="deb")
        vc.wait_state(job, {"RUNNING"}, timeout=120)
        node = vc.job_field(job, "%N")
        ssh = ["nsenter", f"--net=/run/netns/{vc.cluster.netns(node)}", "ssh", "-i", key, "-o", "BatchMode=yes",
               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
               f"alice@{ADDRESS}"]
        deadline = time.monotonic() + 300
        result = None
        while time.monotonic() < deadline:
            result = subprocess.run([*ssh, "hostname; id -un; cloud-init status --wait >/dev/null; "
                                            "cloud-init status; sudo -n true && echo SUDO-OK"],
                                    capture_output=True, text=True, timeout=120)
            if result.returncode == 0:
                break
            time.sleep(3)
        assert result is not None and result.returncode == 0, (result.stderr if result else "",
                                                                vc.serial_log(node, job)[-3000:])
        lines = result.stdout.split()
        assert lines[0] == "debhost" and lines[1] == "alice", result.stdout
        assert "status: done" in result.stdout and "SUDO-OK" in result.stdout, result.stdout
        assert "CLOUD-INIT-RUNCMD-DONE" in vc.serial_log(node, job)
    stop = vc.slurm_vm("stop", "deb")
    assert stop.returncode == 0, stop.stderr
    state = vc.wait_gone_or_ended(job, timeout=120)
    assert state == "COMPLETED", vc.output(job)[-3000:]
    vc.wait_no_leaks(job)
