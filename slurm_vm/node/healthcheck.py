"""The executor of `slurm-vm node check --drain`: drain this node with the check's reason, or resume it."""

from __future__ import annotations

import os
import subprocess

from ..config import Config
from ..errors import SlurmVmError
from .readycheck import drain_command


def _tool(config: Config, name: str) -> str:
    return os.path.join(config.slurm.bin_dir, name) if config.slurm.bin_dir else name


def apply_drain(config: Config, node: str, reason: str | None) -> None:
    timeout = config.slurm.command_timeout
    sinfo = subprocess.run([_tool(config, "sinfo"), "-h", "-N", "-n", node, "-o", "%E"], capture_output=True,
                           text=True, timeout=timeout, check=False)
    if sinfo.returncode != 0:
        raise SlurmVmError(f"sinfo -n {node}: {sinfo.stderr.strip() or 'failed'}")
    current = sinfo.stdout.strip().splitlines()[0] if sinfo.stdout.strip() else ""
    argv = drain_command(_tool(config, "scontrol"), node, reason, "" if current == "none" else current)
    if argv is None:
        return
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise SlurmVmError(f"{' '.join(argv[:3])}: {proc.stderr.strip() or 'failed'}")
