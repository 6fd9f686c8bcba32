"""VM definitions of several shapes, shared by the hypervisor tests."""

from __future__ import annotations

from slurm_vm.hypervisor.definition import Boot, Disk, Nic, Share, VMDefinition

KERNEL = Boot(kernel="/img/vmlinux", initrd="/img/initrd.gz", cmdline="console=ttyS0 quiet")
FIRMWARE = Boot(firmware="/usr/share/cloud-hypervisor/CLOUDHV.fd")


def definition(cpus: int = 1, nics: int = 1, volumes: int = 0, boot: Boot = KERNEL, macvtap: bool = False,
               run_dir: str = "/var/lib/slurm-vm/jobs/42", shares: int = 0,
               share_transport: str = "9p") -> VMDefinition:
    disks = [Disk(f"{run_dir}/overlay.qcow2", "qcow2", False, "root", True),
             Disk(f"{run_dir}/seed.iso", "raw", True, "seed")]
    disks += [Disk(f"/data/vol{i}.img", "raw" if i % 2 else "qcow2", bool(i % 2), "volume") for i in range(volumes)]
    nic_list = [Nic(f"02:00:00:00:00:{i:02x}", device=f"{run_dir}/macvtap{i}") if macvtap and i == nics - 1
                else Nic(f"02:00:00:00:00:{i:02x}", tap=f"svm42n{i}") for i in range(nics)]
    return VMDefinition(job_id=42, name="vm", cpus=cpus, memory_bytes=1 << 30, hypervisor="auto",
                        accelerator="auto", boot=boot, disks=tuple(disks), nics=tuple(nic_list), run_dir=run_dir,
                        grace_seconds=10, qemu_binary="/usr/bin/qemu-system-x86_64",
                        cloud_hypervisor_binary="/usr/bin/cloud-hypervisor", share_transport=share_transport,
                        shares=tuple(Share(f"svm:data{i}-0123abcd", f"/home/alice/data{i}", bool(i % 2))
                                     for i in range(shares)))


SHAPES = {
    "1cpu-1nic-kernel": definition(),
    "4cpu-kernel": definition(cpus=4),
    "3nics": definition(nics=3),
    "volumes": definition(volumes=3),
    "firmware": definition(boot=FIRMWARE),
    "no-nic": definition(nics=0),
    "4cpu-firmware-volumes-2nics": definition(cpus=4, nics=2, volumes=2, boot=FIRMWARE),
    "shares": definition(shares=2),
}
