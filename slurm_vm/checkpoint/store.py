"""Where a job's checkpoints live in the user's checkpoint dir, and which one a requeued job restores.

    <checkpoint.dir with %u>/        the user's, 0700 (made by the prolog: checkpoint/userdir.py)
      job-<jobid>/                   0700
        ckpt-000001/                 one save: state.bin[.gz], overlay.qcow2, manifest.json (written last)
        ckpt-000002/ ...

Everything here runs as the job's user (the launcher, the CLI): root never touches these files.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass

from .manifest import CheckpointRefused, Expected, Manifest, mismatches, read_manifest, verify_files

PREFIX = "ckpt-"


@dataclass(frozen=True)
class Found:
    path: str
    manifest: Manifest


def job_dir(user_dir: str, job_id: int) -> str:
    return os.path.join(user_dir, f"job-{job_id}")


def save_lock(jdir: str) -> str:
    """The job's save lock (drop.py), beside its job dir: `.job-<id>.saving`."""
    return os.path.join(os.path.dirname(jdir), f".{os.path.basename(jdir)}.saving")


def _sequence(name: str) -> int | None:
    digits = name[len(PREFIX):]
    return int(digits) if name.startswith(PREFIX) and digits.isdigit() else None


def checkpoint_dirs(jdir: str) -> list[str]:
    """Every checkpoint directory of the job, oldest first (complete or not)."""
    try:
        names = os.listdir(jdir)
    except FileNotFoundError:
        return []
    numbered = sorted((seq, n) for n in names if (seq := _sequence(n)) is not None)
    return [os.path.join(jdir, n) for _, n in numbered]


def ensure_private_dir(path: str, uid: int) -> None:
    """Make `path` (and missing parents) as the current user, mode 0700; refuse one that is not ours."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        raise CheckpointRefused(f"{path} is not a directory of the job's user")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)


def new_checkpoint_dir(jdir: str, uid: int) -> str:
    ensure_private_dir(jdir, uid)
    existing = [_sequence(os.path.basename(p)) or 0 for p in checkpoint_dirs(jdir)]
    path = os.path.join(jdir, f"{PREFIX}{max(existing, default=0) + 1:06d}")
    os.mkdir(path, 0o700)
    return path


def complete(jdir: str, uid: int) -> list[Found]:
    """Checkpoints whose manifest reads, newest first (files not yet verified)."""
    found = []
    for path in reversed(checkpoint_dirs(jdir)):
        try:
            found.append(Found(path, read_manifest(path, uid)))
        except CheckpointRefused:
            continue
    return found


def find_for_restore(user_dir: str, expected: Expected) -> tuple[Found | None, str]:
    """The newest checkpoint of the job, verified (identity and sha256). Returns (found, "") or (None, why).

    Only the newest complete one is considered: an older one would roll the guest's disk back behind what
    the job already saw. (None, "") means the job has no checkpoint at all."""
    jdir = job_dir(user_dir, expected.job_id)
    dirs = checkpoint_dirs(jdir)
    if not dirs:
        return None, ""
    reasons = []
    for path in reversed(dirs):
        try:
            manifest = read_manifest(path, expected.uid)
        except CheckpointRefused as exc:
            reasons.append(f"{os.path.basename(path)}: {exc}")
            if "did not finish" in str(exc):
                continue          # an interrupted save: the previous checkpoint is the one to use
            return None, "; ".join(reasons)
        problems = mismatches(manifest, expected)
        if problems:
            return None, f"{os.path.basename(path)}: " + "; ".join(problems)
        try:
            verify_files(path, manifest, expected.uid)
        except CheckpointRefused as exc:
            return None, f"{os.path.basename(path)}: {exc}"
        return Found(path, manifest), ""
    return None, "; ".join(reasons) or "no complete checkpoint"


def prune(jdir: str, keep: int, uid: int) -> list[str]:
    """After a save: keep the newest `keep` complete checkpoints, remove every older directory (older complete
    ones and interrupted saves). Returns what was removed."""
    kept = [f.path for f in complete(jdir, uid)[:keep]]
    if not kept:
        return []
    removed = []
    for path in checkpoint_dirs(jdir):
        if path not in kept and os.path.basename(path) < os.path.basename(kept[0]):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    parent = os.path.dirname(path)
    try:
        os.rmdir(parent)       # the job's dir, once it holds no checkpoint
        os.unlink(save_lock(parent))
    except OSError:
        pass
