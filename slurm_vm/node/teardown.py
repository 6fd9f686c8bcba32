"""Undoing a job's host objects: the journal in reverse, then a sweep by name for what it missed.

Everything here is idempotent and never deletes base images or persistent volumes: files are
removed only inside the job's own directory, links only when their name carries the job id.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

from ..errors import SlurmVmError
from ..limits import VMM_PID
from .journal import Entry, Journal
from .layout import error_note_path, job_dir, locks_dir

KILL_WAIT_SECONDS = 5.0


@dataclass
class TeardownReport:
    undone: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _inside(path: str, directory: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), directory]) == directory and path != directory


def undo_entry(state_dir: str, entry: Entry, job_id: int) -> str:
    from ..disks.safefs import remove_tree_safely
    from ..networks import links
    args = entry.args
    jdir = job_dir(state_dir, job_id)
    if entry.action == "job_dir":
        if args.get("path") != jdir:
            raise SlurmVmError(f"journal names job dir {args.get('path')!r}, expected {jdir}: not removed")
        remove_tree_safely(jdir)
        return f"removed {jdir}"
    if entry.action == "file":
        path = str(args.get("path", ""))
        if not _inside(path, jdir):
            raise SlurmVmError(f"journal names a file outside the job dir ({path!r}): not removed")
        remove_tree_safely(path)
        return f"removed {path}"
    if entry.action == "link":
        name = str(args.get("name", ""))
        from ..networks.names import parse_owned_name
        owned = parse_owned_name(name)
        if owned is None or owned[0] != job_id:
            raise SlurmVmError(f"journal names link {name!r}, which is not this job's: not removed")
        links.delete_link(name)
        return f"deleted link {name}"
    if entry.action == "vxlan_segment":
        links.release_vxlan_segment(int(args["vni"]), job_id, locks_dir(state_dir))
        return f"released VXLAN segment {args['vni']}"
    if entry.action == "volume_reservations":
        from ..disks.volumes import VolumeReservations
        VolumeReservations(locks_dir(state_dir)).release_job(job_id)
        return "released volume reservations"
    raise SlurmVmError(f"unknown journal action {entry.action!r}")


def undo_journal(state_dir: str, journal: Journal) -> TeardownReport:
    report = TeardownReport()
    for entry in reversed(journal.entries()):
        try:
            report.undone.append(undo_entry(state_dir, entry, journal.job_id))
        except (SlurmVmError, OSError) as exc:
            report.errors.append(f"{entry.action}: {exc}")
    return report


def kill_hypervisor(state_dir: str, job_id: int, uid: int | None) -> str | None:
    """Kill the job's VMM if it outlived the job (it should not: Slurm's cgroup ends it first)."""
    pid_file = os.path.join(job_dir(state_dir, job_id), VMM_PID)
    try:
        fd = os.open(pid_file, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as fh:
            text = fh.read(64).strip()
    except OSError:
        return None
    if not text.isdigit():
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
        st = os.stat(f"/proc/{pid}")
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().decode("utf-8", "replace")
    except OSError:
        return False
    if uid is not None and st.st_uid != uid:
        return False
    return job_dir(state_dir, job_id) + "/" in cmdline


def sweep_job(state_dir: str, job_id: int) -> TeardownReport:
    """Remove what a journal may have missed: links named after the job, its dir, notes, reservations."""
    from ..disks.safefs import remove_tree_safely
    from ..disks.volumes import VolumeReservations
    from ..networks import links
    report = TeardownReport()
    locks = locks_dir(state_dir)
    actions = [
        *[(f"link {name}", lambda name=name: links.delete_link(name))
          for name, owner, _ in links.list_owned_links() if owner == job_id],
        *[(f"VXLAN segment {vni}", lambda vni=vni: links.release_vxlan_segment(vni, job_id, locks))
          for vni in links.segments_of_job(locks, job_id)],
        (f"job dir {job_id}", lambda: remove_tree_safely(job_dir(state_dir, job_id))),
        ("error note", lambda: remove_tree_safely(error_note_path(state_dir, job_id))),
        ("volume reservations", lambda: VolumeReservations(locks_dir(state_dir)).release_job(job_id)),
    ]
    for label, action in actions:
        try:
            action()
            report.undone.append(label)
        except (SlurmVmError, OSError) as exc:
            report.errors.append(f"{label}: {exc}")
    return report


def teardown_job(state_dir: str, job_id: int, uid: int | None) -> TeardownReport:
    journal = Journal(state_dir, job_id)
    report = TeardownReport()
    killed = kill_hypervisor(state_dir, job_id, uid)
    if killed:
        report.undone.append(killed)
    report.undone.extend(kill_job_processes(state_dir, job_id, uid))
    for part in (undo_journal(state_dir, journal), sweep_job(state_dir, job_id)):
        report.undone.extend(part.undone)
        report.errors.extend(part.errors)
    if not report.errors:
        journal.remove()
    return report
