"""The prolog's part of checkpointing (pure): the `checkpoint` block of vm.json and the stable instance-id.

The prolog does not read the checkpoint dir: it lives on shared storage owned by the user, and root never
touches user files there. It only says where the launcher (running as the user) looks and saves, and makes
sure beforehand that the user's dir exists and is the user's (checkpoint/userdir.py).
"""

from __future__ import annotations

import os

from ..config import Config
from ..spec import VMSpec
from ..hypervisor.checkpoint_settings import CheckpointSettings


def keeps_identity(spec: VMSpec) -> bool:
    """A VM that may be restored after a requeue keeps its cloud-init instance-id across requeues, so that a
    guest that later reboots from its restored disk does not run cloud-init's first boot again."""
    return spec.checkpoints


def checkpoint_definition(spec: VMSpec, config: Config, user: str, restart_count: int, instance_id: str,
                          vm_index: int = 0) -> CheckpointSettings | None:
    if not spec.checkpoints or config.checkpoint.dir is None:
        return None
    bin_dir = config.slurm.bin_dir
    return CheckpointSettings(
        user_dir=config.checkpoint.user_dir(user),
        keep=config.checkpoint.keep,
        compress=config.checkpoint.compress,
        on_preempt=spec.on_preempt,
        on_timeout=spec.on_timeout,
        on_restore_failure=spec.on_restore_failure,
        restart_count=restart_count,
        user=user,
        image=spec.image,
        base_image=config.images[spec.image].path,
        instance_id=instance_id,
        scontrol=os.path.join(bin_dir, "scontrol") if bin_dir else "scontrol",
        command_timeout=config.slurm.command_timeout,
        vm_index=vm_index,
        vm_count=spec.count,
    )
