"""The checkpoint part of vm.json: what the prolog tells the launcher about checkpoints (plain data)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import HypervisorError

TRIGGERS = ("shutdown", "checkpoint")
FALLBACKS = ("fail", "boot")


@dataclass(frozen=True)
class CheckpointSettings:
    user_dir: str              # checkpoint.dir with %u replaced
    keep: int
    compress: str              # auto | zstd | none
    on_preempt: str            # shutdown | checkpoint
    on_timeout: str            # shutdown | checkpoint
    on_restore_failure: str    # fail | boot
    restart_count: int         # SLURM_JOB_RESTART_COUNT at the prolog
    user: str
    image: str
    base_image: str
    instance_id: str
    scontrol: str = "scontrol"
    command_timeout: int = 30
    vm_index: int = 0          # this VM in a multi-VM job (the node's place in the job's node list)
    vm_count: int = 1          # the job's VMs: with more than one, all pause before any saves (group.py)


COMPRESS_MODES = ("auto", "zstd", "none")
TYPES = {"user_dir": str, "keep": int, "compress": (str, bool), "on_preempt": str, "on_timeout": str,
         "on_restore_failure": str, "restart_count": int, "user": str, "image": str, "base_image": str,
         "instance_id": str, "scontrol": str, "command_timeout": int, "vm_index": int, "vm_count": int}


def settings_from_dict(data: object) -> CheckpointSettings | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise HypervisorError("vm.json: checkpoint must be an object")
    names = {f.name for f in fields(CheckpointSettings)}
    if set(data) - names:
        raise HypervisorError(f"vm.json: unknown key checkpoint.{sorted(set(data) - names)[0]}")
    for key, kind in TYPES.items():
        if key in data and (not isinstance(data[key], kind) or isinstance(data[key], bool) and kind is int):
            raise HypervisorError(f"vm.json: checkpoint.{key} has the wrong type")
    if isinstance(data.get("compress"), bool):      # vm.json of an older prolog: true was gzip, now zstd
        data = {**data, "compress": "zstd" if data["compress"] else "none"}
    try:
        settings = CheckpointSettings(**data)
    except TypeError:
        raise HypervisorError("vm.json: checkpoint is missing a key") from None
    if settings.on_preempt not in TRIGGERS or settings.on_timeout not in TRIGGERS or \
            settings.on_restore_failure not in FALLBACKS or settings.compress not in COMPRESS_MODES or \
            not settings.user_dir.startswith("/") or \
            not 0 <= settings.vm_index < settings.vm_count:
        raise HypervisorError("vm.json: checkpoint has a value out of range")
    return settings
