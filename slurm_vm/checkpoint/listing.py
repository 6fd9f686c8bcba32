"""The checkpoints of a user's VM jobs, for `slurm-vm status`, `list` and `checkpoint --list` (read as the user who
asks, from their own checkpoint dir)."""

from __future__ import annotations

import os
import pwd
from dataclasses import asdict, dataclass

from . import barrier, group, store
from .manifest import CheckpointRefused, read_manifest
from ..slurm.states import RESTARTING_STATES

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
        if os.path.isdir(group.part_dir(path, 0)) or os.path.exists(os.path.join(path, barrier.VERDICT)):
            out.append(_job_round(path, uid))
            continue
        try:
            m = read_manifest(path, uid)
        except (CheckpointRefused, OSError) as exc:
            out.append({"path": path, "complete": False, "problem": str(exc)})
            continue
        out.append({"path": path, "complete": True, "reason": m.reason, "created": m.created, "run": m.restart_count,
                    "size_bytes": m.total_size, "state_bytes": m.state_size, "overlay_bytes": m.overlay.size,
                    "vmm": f"{m.vmm} {m.vmm_version}", "image": m.image})
    return out


def _job_round(path: str, uid: int) -> dict:
    """A multi-VM job's checkpoint: complete only with its job manifest; sizes summed over the VMs."""
    try:
        job = group.read_verdict(path, uid)
        parts = [read_manifest(group.part_dir(path, i), uid) for i in range(job.count)]
    except (CheckpointRefused, OSError) as exc:
        return {"path": path, "complete": False, "problem": str(exc)}
    return {"path": path, "complete": True, "reason": job.reason, "created": job.created, "run": job.restart_count,
            "size_bytes": sum(m.total_size for m in parts), "state_bytes": sum(m.state_size for m in parts),
            "overlay_bytes": sum(m.overlay.size for m in parts), "vms": job.count,
            "vmm": f"{parts[0].vmm} {parts[0].vmm_version}", "image": parts[0].image}


def describe(entry: dict) -> str:
    name = os.path.basename(entry["path"])
    if not entry["complete"]:
        return f"{name}: unusable ({entry['problem']})"
    return (f"{name}: {entry['size_bytes'] / 2**20:.1f} MiB (state {entry['state_bytes'] / 2**20:.1f} MiB, overlay "
            f"{entry['overlay_bytes'] / 2**20:.1f} MiB), saved at {entry['reason']} of run {entry['run']}, "
            f"{entry['vmm']}" + (f", {entry['vms']} VMs" if "vms" in entry else ""))


@dataclass(frozen=True)
class JobCheckpoints:
    """One job's directory in a user's checkpoint dir, summed up (for `list` and `checkpoint --list`)."""
    job_id: int
    count: int                  # complete checkpoints (with a manifest that reads)
    size_bytes: int             # their total size
    unfinished: int             # directories without a usable manifest (a save under way or interrupted)
    newest: float | None        # when the newest complete one was saved (seconds since the epoch)
    image: str

    def as_json(self) -> dict:
        return asdict(self)


def job_ids_in(user_dir: str) -> list[int]:
    """The job ids that have a directory in the user's checkpoint dir (empty when it does not exist)."""
    try:
        names = os.listdir(user_dir)
    except OSError:
        return []
    prefix = "job-"
    return sorted(int(n[len(prefix):]) for n in names if n.startswith(prefix) and n[len(prefix):].isdigit())


def user_checkpoints(user_dir: str | None, uid: int | None = None) -> dict[int, JobCheckpoints]:
    """Every job's checkpoints in `user_dir`, by job id; only what `uid` owns counts as complete."""
    if user_dir is None:
        return {}
    out = {}
    for job_id in job_ids_in(user_dir):
        entries = job_checkpoints(user_dir, job_id, uid)
        done = [e for e in entries if e["complete"]]
        out[job_id] = JobCheckpoints(job_id=job_id, count=len(done), size_bytes=sum(e["size_bytes"] for e in done),
                                     unfinished=len(entries) - len(done),
                                     newest=max((e["created"] for e in done), default=None),
                                     image=done[0]["image"] if done else "")
    return out


def summary(count: int, size_bytes: int, state: str) -> str:
    """The CHECKPOINTS column of `slurm-vm list`: '-', '1 (101 MiB)', and for a queued job that will continue
    from its checkpoint when it starts again, ', restores'."""
    if count == 0:
        return "-"
    restores = ", restores" if state in RESTARTING_STATES else ""
    return f"{count} ({size_bytes / 2**20:.0f} MiB){restores}"


def unlisted_note(user_dir: str | None, listed: set[int]) -> str:
    """One line about the caller's checkpoints whose jobs `list` did not show (ended, cancelled while pending,
    forgotten by Slurm): slurm-vm never removes those by itself. Empty when there are none."""
    rest = [c for job_id, c in user_checkpoints(user_dir).items() if job_id not in listed and c.count + c.unfinished]
    if not rest:
        return ""
    size = sum(c.size_bytes for c in rest) / 2**20
    return (f"{len(rest)} job(s) not listed here still have checkpoints ({size:.0f} MiB): see `slurm-vm checkpoint "
            "--list`; `slurm-vm checkpoint --drop JOBID` removes them")
