"""Hypervisors: the VM definition (vm.json), the registry of hypervisors, cores, KVM detection, one module per
VMM (argv or API, its Runtime), the launcher's control socket.

Independent of slurm-vm's spec and config: it runs whatever VMDefinition it is given. The launcher that
drives a VM's life is one layer up, in slurm_vm/launcher/.
"""
