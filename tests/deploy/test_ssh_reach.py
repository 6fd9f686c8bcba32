"""`slurm-vm ssh`/`scp` pick an address the VM's node can reach, and say so in one line when there is none."""

from __future__ import annotations

import pytest

from slurm_vm.config import parse_config
from slurm_vm.errors import NotFound
from slurm_vm.slurm import JobInfo
from slurm_vm.sshjump import scp_command, ssh_command
from slurm_vm import transport

CONFIG = parse_config("""
images: {deb: {path: /img/deb.qcow2, firmware: /f}}
networks:
  lan: {kind: bridge, bridge: br0, subnet: 10.0.0.0/24}
  fabric: {kind: macvtap, parent: eth1, subnet: 10.30.0.0/24}
  private: {kind: vxlan, parent: eth0, vni_range: [100, 199], subnet: 192.168.5.0/24}
""", "config.yaml")


def vm_job(nics: str) -> JobInfo:
    spec = f"name: web\nimage: deb\nnetworks:\n{nics}"
    comment = transport.encode_comment(spec, transport.new_salt())
    return JobInfo(job_id=12, name="vm-web", user="alice", state="RUNNING", nodes=("n2",), comment=comment,
                   spec_text=spec)   # as lifecycle.with_spec reads it from the batch script


def test_the_bridge_address_is_chosen_over_unreachable_ones():
    job = vm_job("  - network: private\n    address: 192.168.5.2/24\n  - network: lan\n")
    argv = ssh_command(job, "n2", "slurm-vm", "debian", (), ("10.0.0.7",), CONFIG.networks)
    assert argv[-1] == "debian@10.0.0.7"


@pytest.mark.parametrize("nics,managed,named", [
    ("  - network: fabric\n", ("10.30.0.9",), "10.30.0.9 on macvtap network 'fabric'"),
    ("  - network: private\n    address: 192.168.5.2/24\n", (), "192.168.5.2 on job-private network 'private'"),
])
def test_no_reachable_address_is_one_line(nics, managed, named):
    with pytest.raises(NotFound) as err:
        ssh_command(vm_job(nics), "n2", "slurm-vm", None, (), managed, CONFIG.networks)
    message = str(err.value)
    assert "\n" not in message and "has no address its node can reach" in message and named in message
    assert "slurm-vm console web" in message
    with pytest.raises(NotFound, match="its node can reach"):
        scp_command(("f", "web:/tmp/"), lambda name: (vm_job(nics), "n2", "slurm-vm"), lambda job: managed,
                    CONFIG.networks)
