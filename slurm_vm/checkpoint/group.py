"""The checkpoint of a multi-VM job (`count` > 1): every VM pauses before any saves, and all stop or all resume.

    job-<jobid>/ckpt-NNNNNN/          one round (barrier.py): NNNNNN = restart count * 100 + attempt
      vm-<i>/                         VM i's part: state.bin[.gz], overlay.qcow2, manifest.json (as a single VM)
      paused-<i>, saved-<i>           the launchers' markers
      verdict.json                    the job manifest (commit, written by launcher 0 last) or an abort

Protocol of launcher i (the VMM-specific steps are callables: pause, save a part):
pause, announce `paused`, wait (bounded) for all; save the part, announce `saved`; launcher 0 waits for all
parts and commits with the job manifest (the sha256 of every part's manifest). Any failure or timeout
decides "aborted"; every launcher then resumes its guest. The checkpoint is valid only with a committed
verdict, which is written after every part is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Callable

from ..errors import SlurmVmError
from . import barrier, store
from .manifest import CheckpointRefused, Expected, Manifest, MANIFEST_NAME, json_object, mismatches, read_manifest, \
    read_owned_file, sha256_of, verify_files

JOB_FORMAT = 1
BARRIER_TIMEOUT = 60.0      # the launchers of a job get the same signal within seconds of each other
MAX_VERDICT_BYTES = 64 * 1024


class RoundAborted(SlurmVmError):
    """The job's launchers did not all save: no checkpoint; the caller resumes its guest."""


@dataclass(frozen=True)
class JobManifest:
    job_id: int
    uid: int
    count: int
    restart_count: int
    reason: str
    created: float
    parts: tuple[str, ...]          # sha256 of vm-<i>/manifest.json, by index
    format: int = JOB_FORMAT

    def to_json(self) -> bytes:
        return (json.dumps({**asdict(self), "kind": "commit"}, indent=2, sort_keys=True) + "\n").encode()


def part_dir(round_dir: str, index: int) -> str:
    return os.path.join(round_dir, f"vm-{index}")


def abort_content(index: int, why: str) -> bytes:
    return (json.dumps({"kind": "aborted", "by": index, "why": why}, sort_keys=True) + "\n").encode()


def parse_verdict(data: bytes) -> JobManifest:
    """A committed round's job manifest; CheckpointRefused for an aborted round or a damaged file."""
    raw = json_object(data, "the job manifest")
    if raw.get("kind") == "aborted":
        raise CheckpointRefused(f"the save was aborted ({raw.get('why', 'no reason')!s:.200})")
    names = {"kind", "job_id", "uid", "count", "restart_count", "reason", "created", "parts", "format"}
    if set(raw) != names or raw["kind"] != "commit" or raw["format"] != JOB_FORMAT:
        raise CheckpointRefused("the job manifest has unexpected keys (damaged or another version)")
    ints = ("job_id", "uid", "count", "restart_count")
    if not all(isinstance(raw[k], int) and not isinstance(raw[k], bool) for k in ints) or \
            not isinstance(raw["reason"], str) or not isinstance(raw["created"], (int, float)) or \
            not isinstance(raw["parts"], list) or len(raw["parts"]) != raw["count"] or \
            not all(isinstance(p, str) and len(p) == 64 for p in raw["parts"]):
        raise CheckpointRefused("the job manifest has a value of the wrong type (damaged)")
    return JobManifest(**{k: raw[k] for k in names - {"kind", "parts"}}, parts=tuple(raw["parts"]))


def read_verdict(round_dir: str, uid: int) -> JobManifest:
    return parse_verdict(read_owned_file(os.path.join(round_dir, barrier.VERDICT), uid, MAX_VERDICT_BYTES,
                                         "job manifest"))


# -- save ------------------------------------------------------------------------------------------------------

def save_together(jdir: str, restart_count: int, index: int, count: int, reason: str, job_id: int,
                  pause: Callable[[], None], save_part: Callable[[str], Manifest], save_timeout: float,
                  barrier_timeout: float = BARRIER_TIMEOUT, say: Callable[[str], None] = lambda _: None) -> str:
    """Run launcher `index`'s side of one round; returns the committed round dir, or raises RoundAborted.

    The guest is paused on return either way; the caller stops it (commit) or resumes it (RoundAborted)."""
    rnd = barrier.open_round(jdir, restart_count)
    name = os.path.basename(rnd)

    def abort(why: str) -> RoundAborted:
        barrier.decide(rnd, abort_content(index, why), index)
        return RoundAborted(f"{name}: {_why(barrier.decided(rnd), why)}")

    try:
        pause()
    except Exception as exc:      # noqa: BLE001 - any failure must reach the other launchers as an abort
        raise abort(f"VM {index} could not pause: {exc}") from None
    barrier.announce(rnd, barrier.PAUSED, index)
    if not barrier.wait_all(rnd, barrier.PAUSED, count, time.monotonic() + barrier_timeout):
        missing = sorted(set(range(count)) - barrier.arrived(rnd, barrier.PAUSED, count))
        raise abort(f"VM(s) {', '.join(map(str, missing))} did not pause within {barrier_timeout:.0f}s")
    say(f"all {count} VMs of the job are paused ({name}); saving VM {index}")
    try:
        os.mkdir(part_dir(rnd, index), 0o700)
        save_part(part_dir(rnd, index))
    except Exception as exc:      # noqa: BLE001
        raise abort(f"VM {index} could not save: {exc}") from None
    barrier.announce(rnd, barrier.SAVED, index)
    deadline = time.monotonic() + save_timeout + barrier_timeout
    if index == 0:
        if not barrier.wait_all(rnd, barrier.SAVED, count, deadline):
            missing = sorted(set(range(count)) - barrier.arrived(rnd, barrier.SAVED, count))
            raise abort(f"VM(s) {', '.join(map(str, missing))} did not save in time")
        parts = tuple(sha256_of(os.path.join(part_dir(rnd, i), MANIFEST_NAME))[1] for i in range(count))
        commit = JobManifest(job_id=job_id, uid=os.getuid(), count=count, restart_count=restart_count,
                             reason=reason, created=time.time(), parts=parts)
        barrier.decide(rnd, commit.to_json(), index)
    verdict = barrier.wait_decided(rnd, deadline + barrier_timeout)
    if verdict is None:
        raise abort("launcher 0 did not decide in time")
    try:
        parse_verdict(verdict)
    except CheckpointRefused:
        raise RoundAborted(f"{name}: {_why(verdict, 'aborted')}") from None
    return rnd


def _why(verdict: bytes | None, fallback: str) -> str:
    try:
        data = json.loads(verdict or b"")
        return f"aborted by VM {data['by']}: {data['why']}" if data.get("kind") == "aborted" else fallback
    except (ValueError, KeyError, AttributeError):
        return fallback


# -- restore ---------------------------------------------------------------------------------------------------

def find_for_restore(user_dir: str, expected: Expected, index: int, count: int) -> tuple[store.Found | None, str]:
    """VM `index`'s part of the job's newest committed round, verified: the job manifest (owner, job, count,
    the sha256 of this part's manifest) and the part itself as a single VM's checkpoint. Rounds that were
    aborted (every guest resumed: not a checkpoint), never decided, or already restored (some VM ran on from it)
    are skipped; the newest committed one is used or refused (no rollback). (None, "") when the job has no checkpoint, aborted rounds only included."""
    jdir = store.job_dir(user_dir, expected.job_id)
    rounds = store.checkpoint_dirs(jdir)
    if not rounds:
        return None, ""
    skipped = []
    for rnd in reversed(rounds):
        name = os.path.basename(rnd)
        try:
            job = read_verdict(rnd, expected.uid)
        except CheckpointRefused as exc:
            if "aborted" in str(exc):
                continue
            if "did not finish" in str(exc):
                skipped.append(f"{name}: {exc}")
                continue
            return None, f"{name}: {exc}"
        if barrier.arrived(rnd, barrier.CONTINUED, count):
            continue        # VMs of the job ran on from it: restoring it again would roll them back
        problem = _job_mismatch(job, expected, count)
        if problem:
            return None, f"{name}: {problem}"
        part = part_dir(rnd, index)
        try:
            if sha256_of(os.path.join(part, MANIFEST_NAME))[1] != job.parts[index]:
                return None, f"{name}: vm-{index}/manifest.json does not match the job manifest (damaged)"
            manifest = read_manifest(part, expected.uid)
            problems = mismatches(manifest, expected)
            if problems:
                return None, f"{name}/vm-{index}: " + "; ".join(problems)
            verify_files(part, manifest, expected.uid)
        except FileNotFoundError:
            return None, f"{name}: vm-{index}/manifest.json is missing"
        except CheckpointRefused as exc:
            return None, f"{name}/vm-{index}: {exc}"
        return store.Found(part, manifest), ""
    return None, "; ".join(skipped)


def _job_mismatch(job: JobManifest, expected: Expected, count: int) -> str:
    if job.uid != expected.uid:
        return f"it belongs to uid {job.uid}, not to the job's user (uid {expected.uid})"
    if job.job_id != expected.job_id:
        return f"it was saved by job {job.job_id}, not job {expected.job_id}"
    if job.count != count:
        return f"it holds {job.count} VMs, the job has {count}"
    return ""


def resume_together(round_dir: str, index: int, count: int, timeout: float = BARRIER_TIMEOUT,
                    say: Callable[[str], None] = lambda _: None) -> bool:
    """At a restore, before the guest runs: wait (bounded) until every VM of the job has loaded its state, so
    that the virtual cluster resumes at once. A VM that cannot restore does not hold the others: after the
    timeout they go on. True when all had loaded."""
    barrier.announce(round_dir, barrier.LOADED, index)
    together = barrier.wait_all(round_dir, barrier.LOADED, count, time.monotonic() + timeout, open_round=False)
    if not together:
        missing = sorted(set(range(count)) - barrier.arrived(round_dir, barrier.LOADED, count))
        say(f"VM(s) {', '.join(map(str, missing))} did not load within {timeout:.0f}s; resuming VM {index} anyway")
    return together


def continued(round_dir: str, index: int, count: int) -> bool:
    """VM `index` runs again from the round: mark it; whoever sees every VM continued removes the round.
    True if this call removed it."""
    barrier.announce(round_dir, barrier.CONTINUED, index)
    if len(barrier.arrived(round_dir, barrier.CONTINUED, count)) < count:
        return False
    store.remove(round_dir)
    return True


def discard_aborted(jdir: str, restart_count: int, uid: int) -> list[str]:
    """Rounds of earlier runs that were aborted hold no checkpoint and no launcher of theirs is alive any more:
    remove them (the first launcher of a restarted job does). Undecided ones stay: interrupted saves."""
    removed = []
    for rnd in store.checkpoint_dirs(jdir):
        seq = int(os.path.basename(rnd)[len(store.PREFIX):])
        if seq >= restart_count * barrier.ROUNDS_PER_RUN:
            continue
        try:
            read_verdict(rnd, uid)
        except CheckpointRefused as exc:
            if "aborted" in str(exc):
                shutil.rmtree(rnd, ignore_errors=True)
                removed.append(rnd)
    if removed:
        try:
            os.rmdir(jdir)
            os.unlink(store.save_lock(jdir))
        except OSError:
            pass
    return removed


def prune(jdir: str, keep: int, uid: int) -> list[str]:
    """After a commit: keep the newest `keep` committed rounds, remove older rounds (committed or not)."""
    committed = []
    for rnd in reversed(store.checkpoint_dirs(jdir)):
        try:
            read_verdict(rnd, uid)
        except CheckpointRefused:
            continue
        committed.append(rnd)
    kept = committed[:keep]
    if not kept:
        return []
    removed = []
    for rnd in store.checkpoint_dirs(jdir):
        if rnd not in kept and os.path.basename(rnd) < os.path.basename(kept[0]):
            shutil.rmtree(rnd, ignore_errors=True)
            removed.append(rnd)
    return removed
