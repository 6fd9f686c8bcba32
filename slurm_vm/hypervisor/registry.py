"""Every hypervisor slurm-vm can run, with what it can do: the one place that names them.

Each entry declares its capabilities as data (the prolog, the spec's validation and vm.json's parser read
them without importing any runtime) and where its runtime-side parts live, loaded only by the launcher:
its Runtime (argv or API builder, start, power button, hard stop), its Snapshotter and its restoring Runtime.
A new hypervisor is one module with those parts plus one line in HYPERVISORS (docs/architecture.md).

`auto` is resolved once, by the prolog on the node (node/hostfacts.py), into a concrete name in vm.json;
everything after (the guest's mount config, the launcher, checkpoints) reads it from there.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

AUTO = "auto"
SHARE_TRANSPORTS = ("9p", "virtiofs")


@dataclass(frozen=True)
class Hypervisor:
    name: str
    share_transports: tuple[str, ...]   # what it serves shares over; the first when the site's choice is not one
    keeps_running_after_save: bool      # the VMM lives on after a checkpoint save (a manual checkpoint resumes it)
    display: bool                       # can show the guest a graphical display; cloud-hypervisor cannot
    needs_kvm: bool                     # cannot run guests without KVM
    binary_field: str                   # the config's and vm.json's field with its binary
    runtime: str                        # "module:Class" of its Runtime, loaded by the launcher
    snapshotter: str                    # "module:Class" of its checkpoint Snapshotter
    restoring_runtime: str              # "module:Class" of the Runtime that continues a checkpoint
    disk_saver: str = ""                # "module:Class" copying the running VM's root disk (`slurm-vm image save`)

    def transport_for(self, wanted: str) -> str:
        """The share transport this hypervisor uses when the site asks for `wanted` (mounts.transport)."""
        return wanted if wanted in self.share_transports else self.share_transports[0]


def _load(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def runtime_class(hypervisor: str):
    return _load(HYPERVISORS[hypervisor].runtime)


def snapshotter_class(hypervisor: str):
    return _load(HYPERVISORS[hypervisor].snapshotter)


def disk_saver_class(hypervisor: str):
    """None: this hypervisor cannot copy a running VM's disk."""
    ref = HYPERVISORS[hypervisor].disk_saver
    return _load(ref) if ref else None


def restoring_runtime_class(hypervisor: str):
    return _load(HYPERVISORS[hypervisor].restoring_runtime)


HYPERVISORS: dict[str, Hypervisor] = {h.name: h for h in (
    Hypervisor("cloud-hypervisor", ("virtiofs",), keeps_running_after_save=False, display=False, needs_kvm=True,
               binary_field="cloud_hypervisor_binary",
               runtime="slurm_vm.launcher.cloud_hypervisor:CloudHypervisorRuntime",
               snapshotter="slurm_vm.launcher.ch_snapshot:CloudHypervisorSnapshotter",
               restoring_runtime="slurm_vm.launcher.ch_restore:RestoringCloudHypervisorRuntime"),
    Hypervisor("qemu", ("9p", "virtiofs"), keeps_running_after_save=True, display=True, needs_kvm=False,
               binary_field="qemu_binary",
               runtime="slurm_vm.launcher.qemu:QemuRuntime",
               snapshotter="slurm_vm.launcher.qemu_save:QemuSnapshotter",
               restoring_runtime="slurm_vm.launcher.qemu_restore:RestoringQemuRuntime",
               disk_saver="slurm_vm.launcher.qemu_backup:QemuDiskSaver"),
)}
# `auto` takes the first of these whose needs the node meets (KVM usable by the job's user, its binary there);
# the last one needs nothing.
AUTO_ORDER = tuple(HYPERVISORS)
NAMES = (AUTO, *HYPERVISORS)


def resolve(requested: str, kvm_usable: bool, binary_present) -> str:
    """The concrete hypervisor for `requested` (a name or `auto`) on a node; `binary_present(kind)` says
    whether that hypervisor's binary is there."""
    if requested != AUTO:
        return requested
    for name in AUTO_ORDER[:-1]:
        kind = HYPERVISORS[name]
        if (kvm_usable or not kind.needs_kvm) and binary_present(kind):
            return name
    return AUTO_ORDER[-1]


def share_transport(hypervisor: str, wanted: str) -> str:
    """The transport a concrete hypervisor serves shares over when the site asks for `wanted`."""
    return HYPERVISORS[hypervisor].transport_for(wanted)
