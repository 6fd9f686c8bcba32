"""Where a node's slurm-vm state lives (see docs/architecture.md, "Node state and ownership").

Plain path functions plus the one executor that makes the root-owned directories; kept free of heavy
imports because every hook needs it.
"""

from __future__ import annotations

import os
import stat

from ..errors import NodeError



def jobs_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "jobs")


def job_dir(state_dir: str, job_id: int) -> str:
    return os.path.join(jobs_dir(state_dir), str(job_id))


def error_note_path(state_dir: str, job_id: int) -> str:
    return os.path.join(jobs_dir(state_dir), f"{job_id}.error")


def journal_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "journal")


def journal_path(state_dir: str, job_id: int) -> str:
    return os.path.join(journal_dir(state_dir), f"{job_id}.jsonl")


def trash_dir(state_dir: str) -> str:
    """Root-only: job dirs moved aside whole (one rename) when removing them takes longer than a hook's budget."""
    return os.path.join(state_dir, "trash")


def locks_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "locks")


def nics_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "nics")


def nic_nodes_dir(state_dir: str, job_id: int) -> str:
    """Root-owned: the job's macvtap device nodes (networks/devnode.py), outside the user's job dir."""
    return os.path.join(nics_dir(state_dir), str(job_id))


def ensure_root_dir(path: str, mode: int) -> None:
    """A directory owned by root with exactly `mode`; refuses one that someone else could have made."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
        raise NodeError(f"{path} is not a root-owned directory; remove it and let slurm-vm recreate it")
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def ensure_state_dirs(state_dir: str) -> None:
    ensure_root_dir(state_dir, 0o711)
    ensure_root_dir(jobs_dir(state_dir), 0o711)
    ensure_root_dir(journal_dir(state_dir), 0o700)
    ensure_root_dir(locks_dir(state_dir), 0o700)
    ensure_root_dir(nics_dir(state_dir), 0o711)
    ensure_root_dir(trash_dir(state_dir), 0o700)
