"""cloud-hypervisor restore: re-targeting a snapshot's config.json to this node (pure), the --restore command
line, and the restore dir built only from verified bytes. cloud-hypervisor itself cannot run here (no usable
KVM): the contract side is in tests/hypervisor/test_ch_checkpoint_contract.py."""

from __future__ import annotations

import json
import os

import pytest

from slurm_vm.checkpoint import store
from slurm_vm.launcher.ch_restore import (build_restore_dir, restore_argv, restore_option, retarget_config)
from slurm_vm.launcher.ch_snapshot import snapshot_files
from slurm_vm.checkpoint.manifest import CheckpointRefused, FileEntry, Manifest, sha256_of, write_manifest
from slurm_vm.errors import HypervisorError
from tests.checkpoint.ch_fixtures import saved_config
from tests.hypervisor.shapes import FIRMWARE, definition

UID = os.getuid()


def test_retarget_moves_affinity_paths_and_serial_to_this_node():
    old = definition(cpus=2, nics=2, volumes=1, run_dir="/var/lib/slurm-vm/jobs/42")
    saved = saved_config(old, [6, 7])
    new = definition(cpus=2, nics=2, volumes=1, run_dir="/srv/svm/jobs/42")
    config = retarget_config(saved, new, [0, 3])
    assert config["cpus"]["affinity"] == [{"vcpu": 0, "host_cpus": [0]}, {"vcpu": 1, "host_cpus": [3]}]
    assert [d["path"] for d in config["disks"]] == [d.path for d in new.disks]
    assert config["disks"][0]["path"] == "/srv/svm/jobs/42/overlay.qcow2"
    assert config["serial"] == {**saved["serial"], "socket": "/srv/svm/jobs/42/serial-vmm.sock"}
    assert config["net"] == saved["net"]                        # fds come with --restore net_fds
    assert config["payload"] == saved["payload"]                # same image: same kernel paths
    for key in ("memory", "rng", "platform", "console"):
        assert config[key] == saved[key]                        # what is not re-targeted is kept as saved
    assert saved["cpus"]["affinity"][0]["host_cpus"] == [6]     # pure: the input is not changed


def test_retarget_takes_this_nodes_boot_files():
    saved = saved_config(definition(boot=FIRMWARE), [0])
    config = retarget_config(saved, definition(boot=FIRMWARE), [1])
    assert config["payload"] == {"firmware": FIRMWARE.firmware}
    config = retarget_config(saved_config(definition(), [0]), definition(boot=FIRMWARE), [1])
    assert config["payload"] == {"firmware": FIRMWARE.firmware, "cmdline": "console=ttyS0 quiet"}


@pytest.mark.parametrize("change,why", [
    (lambda c: c["cpus"].update(boot_vcpus=2), "2 vCPUs, this VM 1"),
    (lambda c: c["memory"].update(size=2 << 30), "bytes of RAM"),
    (lambda c: c["disks"].pop(), "1 disks, this VM 2"),
    (lambda c: c["disks"][0].update(id="disk7"), "disk 0 is not this VM's disk0"),
    (lambda c: c["disks"][1].update(readonly=False), "disk 1 is not"),
    (lambda c: c["net"][0].update(mac="02:00:00:00:00:99"), "NIC 0 is not this VM's net0"),
    (lambda c: c["net"][0].update(tap="tap0"), "not backed by one file descriptor"),
    (lambda c: c["net"][0].update(fds=[3, 4]), "not backed by one file descriptor"),
    (lambda c: c.update(fs=[{"tag": "x", "socket": "/s"}]), "virtiofs"),
    (lambda c: c["serial"].update(mode="Tty"), "serial port was not a socket"),
    (lambda c: c.update(cpus=[]), "cpus is not an object"),
    (lambda c: c.update(net={"id": "net0"}), "net is not a list"),
])
def test_retarget_refuses_a_snapshot_of_another_shape(change, why):
    saved = saved_config(definition(), [0])
    change(saved)
    with pytest.raises(CheckpointRefused, match=why):
        retarget_config(saved, definition(), [0])


def test_retarget_refuses_a_non_object_and_a_core_count_mismatch():
    with pytest.raises(CheckpointRefused, match="not a JSON object"):
        retarget_config([1], definition(), [0])
    with pytest.raises(CheckpointRefused, match="2 cores for 1 vCPUs"):
        retarget_config(saved_config(definition(), [0]), definition(), [0, 1])


def test_restore_command_line_has_only_the_vmms_own_options():
    defn = definition(nics=2)
    argv = restore_argv(defn, "/var/lib/slurm-vm/jobs/42/restore", [7, 8])
    assert argv == ["/usr/bin/cloud-hypervisor", "--api-socket", "path=/var/lib/slurm-vm/jobs/42/api.sock",
                    "--event-monitor", "path=/var/lib/slurm-vm/jobs/42/events.json", "--restore",
                    "source_url=file:///var/lib/slurm-vm/jobs/42/restore,net_fds=[net0@[7],net1@[8]]"]
    assert restore_option("/r", []) == "source_url=file:///r"
    with pytest.raises(HypervisorError, match="comma"):
        restore_option("/a,b", [])
    with pytest.raises(HypervisorError, match="one open file descriptor per NIC"):
        restore_argv(defn, "/r", [7])


def test_snapshot_files_are_what_cloud_hypervisor_wrote_config_first():
    names = ["state.json", "overlay.qcow2", "memory-ranges", "config.json", "manifest.json"]
    assert snapshot_files(names) == ["config.json", "memory-ranges", "state.json"]
    with pytest.raises(HypervisorError, match="no state.json"):
        snapshot_files(["config.json", "memory-ranges"])


def write_checkpoint(user_dir: str, files: dict[str, bytes]) -> store.Found:
    path = store.new_checkpoint_dir(store.job_dir(user_dir, 42), UID)
    entries = []
    for name, data in files.items():
        with open(os.path.join(path, name), "wb") as fh:
            fh.write(data)
        entries.append(FileEntry(name, *sha256_of(os.path.join(path, name))))
    manifest = Manifest(job_id=42, uid=UID, user="u", restart_count=0, reason="preempt", created=1.0, image="tiny",
                        base_image="/img/base.qcow2", base_size=0, vmm="cloud-hypervisor", vmm_version="v53.0",
                        accelerator="kvm", cpus=1, memory_bytes=1 << 30, macs=("02:00:00:00:00:00",),
                        instance_id="i", compressed=False, states=tuple(entries[:-1]), overlay=entries[-1])
    write_manifest(path, manifest)
    return store.Found(path, manifest)


def snapshot(defn, cores=(5,)) -> dict[str, bytes]:
    return {"config.json": json.dumps(saved_config(defn, list(cores))).encode(), "memory-ranges": b"\0" * 4096,
            "state.json": b'{"snapshots": {}}', "overlay.qcow2": b"qcow"}


def test_restore_dir_holds_the_retargeted_config_and_the_verified_state(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    defn = definition(run_dir=str(run_dir))
    found = write_checkpoint(str(tmp_path / "ckpt"), snapshot(defn))
    target = build_restore_dir(found, defn, [2])
    assert sorted(os.listdir(target)) == ["config.json", "memory-ranges", "state.json"]
    config = json.load(open(os.path.join(target, "config.json")))
    assert config["cpus"]["affinity"] == [{"vcpu": 0, "host_cpus": [2]}]
    assert not os.path.islink(os.path.join(target, "state.json"))   # small: copied and re-hashed
    assert open(os.path.join(target, "memory-ranges"), "rb").read() == b"\0" * 4096


def test_a_config_changed_after_verification_is_refused_and_nothing_is_left(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    defn = definition(run_dir=str(run_dir))
    found = write_checkpoint(str(tmp_path / "ckpt"), snapshot(defn))
    config_path = os.path.join(found.path, "config.json")
    data = open(config_path, "rb").read()
    with open(config_path, "wb") as fh:
        fh.write(data.replace(b'"host_cpus": [5]', b'"host_cpus": [9]'))
    with pytest.raises(CheckpointRefused, match="config.json does not match its sha256"):
        build_restore_dir(found, defn, [2])
    assert not os.path.exists(run_dir / "restore")


def test_a_state_file_changed_after_verification_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    defn = definition(run_dir=str(run_dir))
    found = write_checkpoint(str(tmp_path / "ckpt"), snapshot(defn))
    with open(os.path.join(found.path, "state.json"), "r+b") as fh:
        fh.write(b"[")
    with pytest.raises(CheckpointRefused, match="state.json does not match its sha256"):
        build_restore_dir(found, defn, [2])
    assert not os.path.exists(run_dir / "restore")


def test_a_qemu_checkpoint_is_not_a_cloud_hypervisor_snapshot(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    defn = definition(run_dir=str(run_dir))
    found = write_checkpoint(str(tmp_path / "ckpt"), {"state.bin": b"x", "overlay.qcow2": b"q"})
    with pytest.raises(CheckpointRefused, match="no cloud-hypervisor config.json"):
        build_restore_dir(found, defn, [2])


def test_a_manual_checkpoint_that_continues_is_refused_for_cloud_hypervisor():
    from types import SimpleNamespace

    from slurm_vm.checkpoint.manual import refusal
    from slurm_vm.launcher.cloud_hypervisor import CloudHypervisorRuntime
    from slurm_vm.launcher.qemu import QemuRuntime
    defn = definition()
    launcher = SimpleNamespace(defn=defn, checkpoint=SimpleNamespace(settings=SimpleNamespace(vm_count=1)),
                               requested=None)
    ch = CloudHypervisorRuntime(defn, "kvm", [0])
    assert "cannot continue the guest after a save" in refusal(launcher, ch, stop=False)
    assert refusal(launcher, ch, stop=True) is None
    assert refusal(launcher, QemuRuntime(defn, "tcg", [0]), stop=False) is None
