"""The launchers of one multi-VM job agree on a checkpoint through files in the shared checkpoint dir.

One save of the job is a "round" directory that every launcher of the job uses (same name on every node):

    ckpt-NNNNNN/
      paused-<i>        launcher i has paused its guest (empty marker, created atomically)
      saved-<i>         launcher i has written its part vm-<i>/ (state, overlay, its manifest)
      verdict.json      the outcome, decided once: first writer wins (link(2) of a complete temporary file)
      loaded-<i>        at a restore: launcher i's VMM holds the saved state, the guest not yet running
      continued-<i>     after a restore: launcher i's guest runs again

A round commits only when launcher 0 has seen every `saved-<i>` and wins the verdict with the job manifest;
any launcher that fails or gives up waiting writes an "aborted" verdict instead. Because the verdict is
created once and never replaced, every launcher reads the same outcome: all stop (commit) or all resume.
"""

from __future__ import annotations

import errno
import os
import time
from typing import Callable

from .manifest import fsync_dir

PAUSED, SAVED, LOADED, CONTINUED = "paused", "saved", "loaded", "continued"
VERDICT = "verdict.json"
POLL = 0.2
ROUNDS_PER_RUN = 100          # a run's rounds: restart_count * 100 + k (k: the run's k-th attempt)


def marker(phase: str, index: int) -> str:
    return f"{phase}-{index}"


def announce(round_dir: str, phase: str, index: int) -> None:
    """Create the marker `phase-index` (idempotent); O_EXCL makes it atomic on local and NFS storage."""
    try:
        fd = os.open(os.path.join(round_dir, marker(phase, index)),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def arrived(round_dir: str, phase: str, count: int) -> set[int]:
    """The indices (0..count-1) whose `phase` marker exists."""
    try:
        names = set(os.listdir(round_dir))
    except FileNotFoundError:
        return set()
    return {i for i in range(count) if marker(phase, i) in names}


def decided(round_dir: str) -> bytes | None:
    """The verdict's content, or None while the round is open."""
    try:
        with open(os.path.join(round_dir, VERDICT), "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def decide(round_dir: str, content: bytes, index: int) -> bool:
    """Try to settle the round with `content`: True if this call did, False if a verdict was there already.

    The temporary file is complete and fsynced before link(2) makes it the verdict, which fails with EEXIST
    when another launcher was first: never a half-written or replaced verdict."""
    tmp = os.path.join(round_dir, f".{VERDICT}.{index}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, os.path.join(round_dir, VERDICT))
        won = True
    except FileExistsError:
        won = False
    finally:
        os.unlink(tmp)
    fsync_dir(round_dir)
    return won


def wait_all(round_dir: str, phase: str, count: int, deadline: float, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep, open_round: bool = True) -> bool:
    """Wait until every launcher has announced `phase`. False when the deadline passed or, while the round is
    open (saving), when it was decided meanwhile (someone aborted); the caller then aborts."""
    while True:
        if open_round and decided(round_dir) is not None:
            return False
        if len(arrived(round_dir, phase, count)) == count:
            return True
        if clock() >= deadline:
            return False
        sleep(POLL)


def wait_decided(round_dir: str, deadline: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> bytes | None:
    """The verdict, or None at the deadline."""
    while True:
        content = decided(round_dir)
        if content is not None or clock() >= deadline:
            return content
        sleep(POLL)


def round_name(restart_count: int, attempt: int) -> str:
    return f"ckpt-{restart_count * ROUNDS_PER_RUN + attempt:06d}"


def open_round(jdir: str, restart_count: int) -> str:
    """The round this run's launchers meet in: the first of the run's rounds that is not decided yet.

    Every launcher computes the same name from the job's restart count (the same on every node); a round that
    was aborted (or committed, for a checkpoint that let the guests go on) is skipped, so launchers that try
    again after a failed round meet in the next one."""
    for attempt in range(ROUNDS_PER_RUN):
        path = os.path.join(jdir, round_name(restart_count, attempt))
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            if decided(path) is None:
                return path
    raise OSError(errno.ENOSPC, f"all {ROUNDS_PER_RUN} checkpoint rounds of run {restart_count} are used")
