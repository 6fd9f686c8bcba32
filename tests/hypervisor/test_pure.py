"""The hypervisor module's functional parts: definitions, core maps, KVM detection, QEMU argv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurm_vm.errors import HypervisorError
from slurm_vm.hypervisor.cores import cgroup_cpuset, io_cores, parse_cpu_list, vcpu_map
from slurm_vm.hypervisor.definition import ACCELERATORS, Boot, Disk, Nic, Share, VMDefinition
from slurm_vm.hypervisor.registry import HYPERVISORS, NAMES, SHARE_TRANSPORTS
from slurm_vm.hypervisor.kvm import kvm_usability
from slurm_vm.launcher.qemu import qemu_argv
from tests.hypervisor.shapes import SHAPES, definition


@pytest.mark.parametrize("name", SHAPES)
def test_definition_round_trips(name):
    defn = SHAPES[name]
    assert VMDefinition.from_json(defn.to_json()) == defn


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
PATH = TEXT.map(lambda t: "/" + t)
BOOTS = st.one_of(st.builds(Boot, kernel=PATH, initrd=st.none() | PATH, cmdline=st.none() | TEXT),
                  st.builds(Boot, firmware=PATH))
DISKS = st.builds(Disk, path=PATH, format=st.sampled_from(["qcow2", "raw"]), readonly=st.booleans(),
                  role=st.sampled_from(["root", "seed", "volume"]), backing=st.booleans())
NICS = st.one_of(st.builds(Nic, mac=TEXT, tap=TEXT), st.builds(Nic, mac=TEXT, device=PATH))
DEFINITIONS = st.builds(
    VMDefinition, job_id=st.integers(1, 2**32 - 1), name=TEXT, cpus=st.integers(1, 512),
    memory_bytes=st.integers(16 << 20, 1 << 50), hypervisor=st.sampled_from(NAMES),
    accelerator=st.sampled_from(ACCELERATORS), boot=BOOTS, disks=st.lists(DISKS, max_size=4).map(tuple),
    nics=st.lists(NICS, max_size=8).map(tuple), run_dir=PATH, grace_seconds=st.integers(0, 3600),
    qemu_binary=PATH, cloud_hypervisor_binary=PATH,
    shares=st.lists(st.builds(Share, tag=st.text("abcxyz:-0123456789", min_size=1, max_size=31),
                              path=st.text("abc/_-", max_size=30).map(lambda t: "/" + t), readonly=st.booleans()),
                    max_size=4).map(tuple),
    share_transport=st.sampled_from(SHARE_TRANSPORTS), virtiofsd_binary=PATH,
    memory_overhead_bytes=st.integers(0, 1 << 40)).filter(
        lambda d: d.hypervisor not in HYPERVISORS or d.share_transport in HYPERVISORS[d.hypervisor].share_transports)


@settings(max_examples=300)
@given(DEFINITIONS)
def test_every_valid_definition_round_trips(defn):
    """The prolog's to_json and the launcher's from_json are one contract: whatever the plan can hold survives."""
    assert VMDefinition.from_json(defn.to_json()) == defn


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(extra=1), "unknown key"),
    (lambda d: d.pop("cpus"), "missing key"),
    (lambda d: d["boot"].update(firmware="/x"), "exactly one of kernel or firmware"),
    (lambda d: d["nics"][0].update(device="/dev/x"), "exactly one of tap or device"),
    (lambda d: d.update(cpus="2"), "wrong type"),
    (lambda d: d.update(cpus=True), "wrong type"),
    (lambda d: d.update(hypervisor="xen"), "unknown hypervisor"),
    (lambda d: d["disks"][0].update(format="vmdk"), "qcow2 or raw"),
])
def test_definition_is_strict(mutate, message):
    data = json.loads(definition().to_json())
    mutate(data)
    with pytest.raises(HypervisorError, match=message):
        VMDefinition.from_json(json.dumps(data))


def test_cpu_lists_and_core_map():
    assert parse_cpu_list("0-2,5,7-8\n") == {0, 1, 2, 5, 7, 8}
    assert vcpu_map(2, [4, 6, 7]) == [4, 6]
    with pytest.raises(HypervisorError, match="--cpus-per-task=3"):
        vcpu_map(3, [0, 1])


def test_io_threads_and_share_daemons_take_the_spare_cores_else_share_all():
    assert io_cores([4, 6, 7], [4, 6]) == [7]              # --cpus-per-task = vCPUs + 1: a core of their own
    assert io_cores([2, 3, 8, 9], [2, 3]) == [8, 9]
    assert io_cores([4, 6], [4, 6]) == [4, 6]              # every core has a vCPU: shared with them


def test_cgroup_cpuset_reads_v1_and_v2(tmp_path):
    v1 = tmp_path / "v1"
    (v1 / "cpuset" / "slurm" / "job_1").mkdir(parents=True)
    (v1 / "cpuset" / "slurm" / "job_1" / "cpuset.cpus").write_text("2-3\n")
    (tmp_path / "cg1").write_text("4:memory:/x\n3:cpuset:/slurm/job_1\n")
    assert cgroup_cpuset(str(tmp_path / "cg1"), str(v1)) == {2, 3}
    v2 = tmp_path / "v2"
    (v2 / "system.slice" / "job_2").mkdir(parents=True)
    (v2 / "system.slice" / "job_2" / "cpuset.cpus.effective").write_text("")
    (v2 / "system.slice" / "job_2" / "cpuset.effective_cpus").write_text("1\n")
    (tmp_path / "cg2").write_text("0::/system.slice/job_2\n")
    assert cgroup_cpuset(str(tmp_path / "cg2"), str(v2)) == {1}


def test_kvm_detection_names_the_cause(tmp_path):
    dev = tmp_path / "kvm"
    dev.write_text("")
    mods = tmp_path / "module"
    (mods / "kvm").mkdir(parents=True)
    usable, reason = kvm_usability(str(dev), str(mods))
    assert not usable and "neither kvm_intel nor kvm_amd" in reason
    (mods / "kvm_pvm").mkdir()
    os.chmod(dev, 0)  # a PVM host's /dev/kvm is often root-only: the PVM cause still comes first
    usable, reason = kvm_usability(str(dev), str(mods))
    assert not usable and "nested PVM host" in reason
    (mods / "kvm_intel").mkdir()
    assert not kvm_usability(str(tmp_path / "missing"), str(mods))[0]
    assert "does not exist" in kvm_usability(str(tmp_path / "missing"), str(mods))[1]
    os.chmod(dev, 0o600)
    assert kvm_usability(str(dev), str(mods))[0]


def test_kvm_detection_names_permissions_for_a_user_without_access():
    if os.geteuid() != 0:
        pytest.skip("needs root to run the check as another user")
    top = tempfile.mkdtemp(prefix="svm-kvm-")
    try:
        os.chmod(top, 0o755)
        dev = os.path.join(top, "kvm")
        with open(dev, "w"):
            pass
        os.chmod(dev, 0o600)
        os.makedirs(os.path.join(top, "module", "kvm_amd"))
        script = f"from slurm_vm.hypervisor.kvm import kvm_usability as k; print(k({dev!r}, {top + '/module'!r}))"
        proc = subprocess.run(["runuser", "-u", "nobody", "--", sys.executable, "-c", script], capture_output=True,
                              text=True, timeout=60, check=False, cwd="/")
        assert "(False, '" in proc.stdout and "not readable and writable by this user" in proc.stdout, \
            proc.stdout + proc.stderr
    finally:
        shutil.rmtree(top)


def test_kvm_detection_on_this_machine_never_says_usable_for_pvm():
    if os.path.isdir("/sys/module/kvm_pvm") and not (os.path.isdir("/sys/module/kvm_intel") or
                                                     os.path.isdir("/sys/module/kvm_amd")):
        assert kvm_usability()[0] is False
    else:
        pytest.skip("this host has no nested PVM KVM")


def test_qemu_argv_for_kernel_boot():
    defn = definition(cpus=2, nics=2, volumes=1)
    argv = qemu_argv(defn, "tcg", [5, 6])
    joined = " ".join(argv)
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert "-S" in argv and "-nodefaults" in argv
    assert argv[argv.index("-accel") + 1] == "tcg,tb-size=64"
    assert argv[argv.index("-smp") + 1] == "2" and argv[argv.index("-m") + 1] == "1024M"
    assert argv[argv.index("-kernel") + 1] == "/img/vmlinux"
    assert "-netdev tap,id=n0,fd=5" in joined and "-netdev tap,id=n1,fd=6" in joined
    assert "virtio-net-pci,netdev=n1,mac=02:00:00:00:00:01" in joined
    assert "file=/var/lib/slurm-vm/jobs/42/seed.iso,format=raw" in joined and "readonly=on" in joined
    assert "file.locking=on" in joined
    assert "unix:/var/lib/slurm-vm/jobs/42/qmp.sock,server=on,wait=off" in joined
    assert "socket,id=serial0,path=/var/lib/slurm-vm/jobs/42/serial.sock,server=on,wait=off," \
           "logfile=/var/lib/slurm-vm/jobs/42/serial.log,logappend=on" in joined
    assert argv[argv.index("-serial") + 1] == "chardev:serial0"


def test_qemu_argv_for_firmware_and_kvm():
    argv = qemu_argv(definition(boot=SHAPES["firmware"].boot), "kvm", [3])
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-bios") + 1].endswith("CLOUDHV.fd")
    assert "-kernel" not in argv


def test_qemu_argv_escapes_commas_and_needs_one_fd_per_nic():
    defn = definition(run_dir="/var/lib/a,b")
    assert "file=/var/lib/a,,b/overlay.qcow2" in " ".join(qemu_argv(defn, "tcg", [3]))
    with pytest.raises(HypervisorError):
        qemu_argv(definition(nics=2), "tcg", [3])
