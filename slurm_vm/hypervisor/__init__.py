"""Hypervisors as data and shared parts: the VM definition (vm.json), the registry of hypervisors and their
capabilities, cores, KVM detection, share daemons, the Runtime base class, the launcher's control socket.

Independent of slurm-vm's spec and config: it runs whatever VMDefinition it is given. Each VMM's own module
(argv, API, Runtime, snapshotter) and the launcher that drives a VM's life are one layer up, in
slurm_vm/launcher/.
"""
