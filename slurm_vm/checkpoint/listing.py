"""The checkpoints of a VM job, for `slurm-vm status` (read as the user who asks, from their checkpoint dir)."""

from __future__ import annotations

import os
import pwd

from . import store
from .manifest import CheckpointRefused, read_manifest


def owner_uid(user: str) -> int:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return os.getuid()


def job_checkpoints(user_dir: str | None, job_id: int, uid: int | None = None) -> list[dict]:
    """Newest first: complete ones with their sizes, unfinished saves marked as such. Empty without a dir."""
    if user_dir is None:
        return []
    uid = os.getuid() if uid is None else uid
    out = []
    try:
        dirs = store.checkpoint_dirs(store.job_dir(user_dir, job_id))
    except OSError:
        return []
    for path in reversed(dirs):
        try:
            m = read_manifest(path, uid)
        except (CheckpointRefused, OSError) as exc:
            out.append({"path": path, "complete": False, "problem": str(exc)})
            continue
        out.append({"path": path, "complete": True, "reason": m.reason, "created": m.created, "run": m.restart_count,
                    "size_bytes": m.total_size, "state_bytes": m.state_size, "overlay_bytes": m.overlay.size,
                    "vmm": f"{m.vmm} {m.vmm_version}"})
    return out


def describe(entry: dict) -> str:
    name = os.path.basename(entry["path"])
    if not entry["complete"]:
        return f"{name}: unusable ({entry['problem']})"
    return (f"{name}: {entry['size_bytes'] / 2**20:.1f} MiB (state {entry['state_bytes'] / 2**20:.1f} MiB, overlay "
            f"{entry['overlay_bytes'] / 2**20:.1f} MiB), saved at {entry['reason']} of run {entry['run']}, "
            f"{entry['vmm']}")
