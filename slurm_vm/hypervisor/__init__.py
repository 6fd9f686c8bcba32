"""Hypervisor management: the VM definition, cores, KVM detection, QEMU and cloud-hypervisor, the launcher.

Independent of slurm-vm's spec and config: it runs whatever VMDefinition it is given.
"""
