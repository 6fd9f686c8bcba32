"""The memory limit of this process's cgroup (the job step's, set by Slurm's ConstrainRAMSpace), v1 or v2.

The limit that applies is the smallest one on the way from the process's cgroup up to the root."""

from __future__ import annotations

import os

from ..errors import NotEnoughMemory

UNLIMITED = 1 << 60   # v1 writes 9223372036854771712 for "no limit"


def _read_limit(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    if not text.isdigit():      # v2 "max"
        return None
    value = int(text)
    return value if value < UNLIMITED else None


def _smallest_up(root: str, path: str, name: str) -> int | None:
    limits = []
    directory = os.path.join(root, path.strip("/"))
    while True:
        limit = _read_limit(os.path.join(directory, name))
        if limit is not None:
            limits.append(limit)
        if os.path.normpath(directory) == os.path.normpath(root) or not directory.startswith(root):
            break
        directory = os.path.dirname(directory)
    return min(limits) if limits else None


def cgroup_memory_limit(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes this process's cgroup may use, or None where there is no limit or it cannot be read."""
    try:
        with open(proc_cgroup) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if "memory" in controllers.split(","):
            found.append(_smallest_up(os.path.join(root, "memory"), path, "memory.limit_in_bytes"))
        elif controllers == "":
            found.append(_smallest_up(root, path, "memory.max"))
    limits = [limit for limit in found if limit is not None]
    return min(limits) if limits else None


def check_memory(guest_bytes: int, overhead_bytes: int, limit: int | None) -> None:
    """Refuse a VM whose guest memory plus the VMM overhead does not fit in the job's memory limit."""
    needed = guest_bytes + overhead_bytes
    if limit is None or limit >= needed:
        return
    raise NotEnoughMemory(f"the job may use {limit >> 20} MiB of memory but the VM needs {needed >> 20} MiB "
                          f"({guest_bytes >> 20} MiB guest + {overhead_bytes >> 20} MiB hypervisor overhead); "
                          f"submit with --mem={-(-needed >> 20)}M or more (slurm-vm submit sets it)")
