"""The launcher: the job step that runs one VM (launcher.py), above checkpoint, which it drives; one module per
VMM (qemu.py, cloud_hypervisor.py) with its checkpoint snapshotter and restoring runtime beside it."""
