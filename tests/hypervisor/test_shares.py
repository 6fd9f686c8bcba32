"""Share options for both VMMs and virtiofsd (pure), and the vm.json contract for shares.

cloud-hypervisor's side is checked against its v53 OpenAPI spec in test_cloud_hypervisor_contract.py
(the `shares` shape); QEMU and virtiofsd run for real in bench/shares.py and the e2e tests.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from slurm_vm.errors import HypervisorError
from slurm_vm.launcher.cloud_hypervisor import ch_argv, ch_vm_config
from slurm_vm.hypervisor.definition import VMDefinition
from slurm_vm.launcher.qemu import qemu_argv
from slurm_vm.hypervisor.registry import share_transport
from slurm_vm.hypervisor.shares import virtiofsd_argv
from tests.hypervisor.shapes import definition

RUN = "/var/lib/slurm-vm/jobs/42"


def test_qemu_9p_needs_no_daemon_and_marks_readonly():
    argv = qemu_argv(definition(shares=2), "tcg", [3])
    fsdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-fsdev"]
    assert fsdevs == ["local,id=fs0,path=/home/alice/data0,security_model=none",
                      "local,id=fs1,path=/home/alice/data1,security_model=none,readonly=on"]
    assert "virtio-9p-pci,fsdev=fs1,mount_tag=svm:data1-0123abcd" in argv
    assert "memory-backend-memfd" not in " ".join(argv)


def test_qemu_virtiofs_shares_guest_memory_and_uses_the_sockets():
    argv = " ".join(qemu_argv(definition(shares=1, share_transport="virtiofs"), "tcg", [3]))
    assert "-object memory-backend-memfd,id=mem,size=1024M,share=on -numa node,memdev=mem" in argv
    assert f"-chardev socket,id=vfs0,path={RUN}/virtiofs0.sock" in argv
    assert "vhost-user-fs-pci,chardev=vfs0,tag=svm:data0-0123abcd,queue-size=1024" in argv
    assert "-fsdev" not in argv


def test_cloud_hypervisor_always_uses_virtiofs_with_shared_memory():
    defn = definition(shares=2)
    assert share_transport("cloud-hypervisor", "9p") == "virtiofs"
    assert share_transport("qemu", "9p") == "9p"
    argv = ch_argv(defn, [0], [3])
    assert argv[argv.index("--memory") + 1] == "size=1024M,shared=on"
    fs = argv[argv.index("--fs") + 1:]
    assert fs == [f"tag=svm:data{i}-0123abcd,socket={RUN}/virtiofs{i}.sock,num_queues=1,queue_size=1024,id=fs{i}"
                  for i in range(2)]
    config = ch_vm_config(defn, [0])
    assert config["memory"]["shared"] is True
    assert [f["socket"] for f in config["fs"]] == [f"{RUN}/virtiofs0.sock", f"{RUN}/virtiofs1.sock"]
    plain = ch_argv(definition(), [0], [3])
    assert "--fs" not in plain and plain[plain.index("--memory") + 1] == "size=1024M"


def test_virtiofsd_runs_in_a_user_namespace_mapping_only_the_user():
    defn = definition(shares=2)
    rw, ro = virtiofsd_argv(defn, 0), virtiofsd_argv(defn, 1)
    assert rw[:3] == ["/usr/bin/unshare", "--user", "--map-root-user"]
    assert "--map-users" not in rw and "--setuid" not in rw
    assert rw[rw.index("-c") + 3:rw.index("-c") + 5] == ["/home/alice/data0", "rw"]
    assert ro[ro.index("-c") + 3:ro.index("-c") + 5] == ["/home/alice/data1", "ro"]
    assert f"--socket-path={RUN}/virtiofs0.sock" in rw and "source=/home/alice/data0" in rw
    assert "sandbox=namespace" in rw
    # the path is an argument to the wrapper script, never part of it
    assert "/home/alice" not in rw[rw.index("-c") + 1]


def round_trip(defn: VMDefinition) -> VMDefinition:
    return VMDefinition.from_json(defn.to_json())


def test_vm_json_round_trip_and_old_files_without_shares():
    defn = definition(shares=2, share_transport="virtiofs")
    assert round_trip(defn) == defn
    data = json.loads(definition().to_json())
    for key in ("shares", "share_transport", "virtiofsd_binary"):
        data.pop(key)
    assert VMDefinition.from_json(json.dumps(data)).shares == ()


@pytest.mark.parametrize("change", [
    {"share_transport": "nfs"},
    {"shares": [{"tag": "t", "path": "relative", "readonly": False}]},
    {"shares": [{"tag": "t", "path": "/a,b", "readonly": False}]},
    {"shares": [{"tag": "x" * 40, "path": "/a", "readonly": False}]},
    {"shares": [{"tag": "t", "path": "/a", "readonly": False, "extra": 1}]},
    {"shares": "nope"},
])
def test_bad_shares_in_vm_json_are_refused(change):
    data = {**json.loads(definition().to_json()), **change}
    with pytest.raises(HypervisorError):
        VMDefinition.from_json(json.dumps(data))


def test_shares_are_frozen_data():
    assert dataclasses.is_dataclass(definition(shares=1).shares[0])
