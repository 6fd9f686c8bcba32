"""Which VM a user may reach, and one-line reasons when they may not (not theirs, pending, ended).

Used by console, ssh and wait: checked before srun is asked, so a user sees "not your VM" instead of
srun's "Access/permission denied".
"""

from __future__ import annotations

import os

from .errors import SlurmVmError
from .errors import NotFound
from .lifecycle import ACTIVE_STATES, find_vm
from .slurm import JobInfo, SlurmBackend

ENDED_TAIL_LINES = 10
SERIAL_TAIL_HEADER = "lines of the guest's serial console:"


class NotYours(SlurmVmError):
    pass


class NotRunning(SlurmVmError):
    pass


def owned_vm(backend: SlurmBackend, ref: str, user: str) -> JobInfo:
    """The VM `ref` (name or job id) of `user`; root may reach every VM."""
    try:
        job = find_vm(backend, ref, None if user == "root" else user)
    except NotFound:
        if ref.isdigit():
            raise
        others = [j for j in find_all_named(backend, ref) if j.user != user]
        if others:
            raise NotYours(f"VM {ref} belongs to {others[0].user}: not your VM") from None
        raise
    if user != "root" and job.user != user:
        raise NotYours(f"job {job.job_id} (VM {job.vm_name}) belongs to {job.user}: not your VM")
    return job


def find_all_named(backend: SlurmBackend, name: str) -> list[JobInfo]:
    from .submit import JOB_NAME_PREFIX
    return [j for j in backend.jobs() if j.is_vm and j.name == JOB_NAME_PREFIX + name]


def require_running(backend: SlurmBackend, job: JobInfo) -> str:
    """The node of a running VM; otherwise a one-line reason (with the last console lines once it ended)."""
    if job.state == "RUNNING" and job.nodes:
        return job.nodes[0]
    if job.state in ACTIVE_STATES:
        reason = f" (reason: {job.reason})" if job.reason and job.reason != "None" else ""
        raise NotRunning(f"VM {job.vm_name} is {job.state.lower()}{reason}")
    tail = ended_tail(backend, job.job_id)
    lines = "".join(f"\n  | {line}" for line in tail)
    raise NotRunning(f"VM {job.vm_name} (job {job.job_id}) ended: {job.state}"
                     + (f"; its last console lines:{lines}" if tail else ""))


def ended_tail(backend: SlurmBackend, job_id: int, lines: int = ENDED_TAIL_LINES) -> list[str]:
    """The guest's last console lines, which the launcher copied into the job's output file."""
    path = backend.output_path(job_id)
    if not path or not os.path.isfile(path):
        return []
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    return serial_lines_of_output(text)[-lines:]


def serial_lines_of_output(lines: list[str]) -> list[str]:
    """The console lines the launcher printed as `  | line` after its header."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].rstrip().endswith(SERIAL_TAIL_HEADER):
            return [line[4:] if line.startswith("  | ") else line for line in lines[i + 1:]
                    if line.startswith("  |")]
    return []
