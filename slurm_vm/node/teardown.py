"""Undoing a job's host objects: the journal in reverse, then a sweep by name for what it missed.

Everything here is idempotent and never deletes base images or persistent volumes: files are
removed only inside the job's own directory, links only when their name carries the job id.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

from ..errors import NodeError, SlurmVmError
from ..disks.safefs import detach_mounts_below, read_user_file
from ..limits import VMM_PID
from .journal import Journal
from .layout import job_dir
from .objects import KINDS, Scope, kind_of
from .system import HostSystem, System

KILL_WAIT_SECONDS = 5.0
MAX_CMDLINE = 1 << 16


@dataclass
class TeardownReport:
    undone: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def undo_journal(state_dir: str, journal: Journal, system: System) -> TeardownReport:
    """Undo each recorded object, newest first; an entry that fails is reported and the rest go on."""
    report = TeardownReport()
    scope = Scope(state_dir, journal.job_id)
    for entry in reversed(journal.entries()):
        kind = kind_of(entry.kind)
        try:
            if kind is None:
                raise NodeError(f"unknown kind of host object {entry.kind!r}")
            report.undone.append(kind.undo(system, scope, entry.data))
        except (SlurmVmError, OSError) as exc:
            report.errors.append(f"{entry.kind}: {exc}")
    return report


def kill_hypervisor(state_dir: str, job_id: int, uid: int | None) -> str | None:
    """Kill the job's VMM if it outlived the job (it should not: Slurm's cgroup ends it first)."""
    # The job dir is the user's: the pid file may be a FIFO, a link, a device's name, a huge file, anything.
    data = read_user_file(os.path.join(job_dir(state_dir, job_id), VMM_PID), 64, owner=uid)
    text = (data or b"").strip()
    if not text.isdigit() or len(text) > 10:
        return None
    pid = int(text)
    if not _is_job_vmm(pid, job_id, state_dir, uid):
        return None
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.05)
    return f"killed leftover hypervisor pid {pid}"


def kill_job_processes(state_dir: str, job_id: int, uid: int | None) -> list[str]:
    """Kill leftover helpers of the job (virtiofsd and its namespace wrapper): processes of the job's
    user whose command line names the job dir. Needs a known uid: never kills another user's process."""
    if uid is None:
        return []
    killed = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid() and _is_job_vmm(int(name), job_id, state_dir, uid):
            try:
                os.kill(int(name), signal.SIGKILL)
                killed.append(f"killed leftover job process {name}")
            except ProcessLookupError:
                continue
    return killed


def _is_job_vmm(pid: int, job_id: int, state_dir: str, uid: int | None) -> bool:
    """Only a process of the job's user whose command line names the job dir counts (pids get reused)."""
    try:
        if uid is not None and os.stat(f"/proc/{pid}").st_uid != uid:
            return False        # another user's process: its command line is not even read
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read(MAX_CMDLINE).decode("utf-8", "replace")
    except OSError:
        return False
    return job_dir(state_dir, job_id) + "/" in cmdline


def sweep_job(state_dir: str, job_id: int, system: System) -> TeardownReport:
    """Remove what a journal may have missed, kind by kind, found by the job's id in names."""
    report = TeardownReport()
    scope = Scope(state_dir, job_id)
    for kind in KINDS.values():
        try:
            report.undone.extend(kind.sweep(system, scope))
        except (SlurmVmError, OSError) as exc:
            report.errors.append(f"{kind.kind}: {exc}")
    return report


def teardown_job(state_dir: str, job_id: int, uid: int | None, system: System | None = None) -> TeardownReport:
    """Every step runs, whatever the one before it hit: a step that fails is reported, the next goes on."""
    system = system or HostSystem()
    journal = Journal(state_dir, job_id)
    report = TeardownReport()
    steps = (lambda: _one(kill_hypervisor(state_dir, job_id, uid)),
             lambda: TeardownReport(kill_job_processes(state_dir, job_id, uid)),
             lambda: TeardownReport(detach_mounts_below(job_dir(state_dir, job_id))),
             lambda: undo_journal(state_dir, journal, system),
             lambda: sweep_job(state_dir, job_id, system))
    for step in steps:
        try:
            part = step()
        except (SlurmVmError, OSError) as exc:
            part = TeardownReport(errors=[str(exc)])
        report.undone.extend(part.undone)
        report.errors.extend(part.errors)
    if not report.errors:
        journal.remove()
    return report


def _one(done: str | None) -> TeardownReport:
    return TeardownReport([done] if done else [])
