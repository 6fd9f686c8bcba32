"""A cloud-hypervisor snapshot's config.json as v53 writes it (its VmConfig serialized with serde), for the
checkpoint tests. cloud-hypervisor cannot run here (no usable KVM), so this is built from the VmConfig that
slurm-vm itself would start (ch_vm_config) plus what the VMM adds when it serializes: file-descriptor NICs
(`fds`, no `tap`: None fields are skipped), queue sizes and defaults, and sections slurm-vm never sets."""

from __future__ import annotations

from slurm_vm.launcher.cloud_hypervisor import ch_vm_config
from slurm_vm.hypervisor.definition import VMDefinition


def saved_config(defn: VMDefinition, cores: list[int], fds: list[int] | None = None) -> dict:
    config = ch_vm_config(defn, cores) if all(n.tap for n in defn.nics) else _without_net(defn, cores)
    config["cpus"].update(kvm_hyperv=False, max_phys_bits=46, nested=True, features={})
    config["memory"].update(mergeable=False, hotplug_method="Acpi", hugepages=False, prefault=False,
                            thp=True)
    for disk in config.get("disks", []):
        disk.update(direct=False, iommu=False, num_queues=1, queue_size=128, vhost_user=False, pci_segment=0,
                    disable_io_uring=False, disable_aio=False, sparse=True)
    fds = fds if fds is not None else [10 + i for i in range(len(defn.nics))]
    config["net"] = [{"id": f"net{i}", "mac": nic.mac, "fds": [fd], "num_queues": 2, "queue_size": 256,
                      "vhost_user": False, "vhost_mode": "Client", "pci_segment": 0, "offload_tso": True,
                      "offload_ufo": True, "offload_csum": True}
                     for i, (nic, fd) in enumerate(zip(defn.nics, fds))]
    if not config["net"]:
        del config["net"]
    config["serial"].update(file=None, iommu=False)
    config["rng"] = {"src": "/dev/urandom", "iommu": False}
    config["platform"] = {"num_pci_segments": 1, "serial_number": None}
    config["iommu"] = False
    config["watchdog"] = False
    config["pvpanic"] = False
    return config


def _without_net(defn: VMDefinition, cores: list[int]) -> dict:
    from dataclasses import replace
    return ch_vm_config(replace(defn, nics=()), cores)
