"""Disks for VMs: qcow2 overlays, cloud-init NoCloud seeds, persistent volumes, safe file handling for root.

Independent of slurm-vm's spec and config: functions take plain arguments.
"""
