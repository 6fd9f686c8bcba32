"""Which VM a user may reach, and one-line reasons when they may not (not theirs, pending, ended).

Used by console, ssh and wait: checked before srun is asked, so a user sees "not your VM" instead of
srun's "Access/permission denied".
"""

from __future__ import annotations

import os

from .errors import NotFound, NotYours
from .lifecycle import find_vm, with_spec
from .lifecycle import require_running as require_running_job
from .limits import JOB_NAME_PREFIX
from .slurm import JobInfo, SlurmBackend
from .slurm.states import ACTIVE_STATES

ENDED_TAIL_LINES = 10
SERIAL_TAIL_HEADER = "lines of the guest's serial console:"


def owned_vm(backend: SlurmBackend, ref: str, user: str) -> JobInfo:
    """The VM `ref` (name or job id) of `user`, with its spec; root may reach every VM."""
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
        raise NotYours(f"job {job.job_id} is VM {job.vm_name} of user {job.user}: not your VM")
    return with_spec(backend, job)


def find_all_named(backend: SlurmBackend, name: str) -> list[JobInfo]:
    return [j for j in backend.jobs() if j.is_vm and j.name == JOB_NAME_PREFIX + name]


def require_running(backend: SlurmBackend, job: JobInfo, needs: str = "it is reachable") -> str:
    """The node of a running VM; an ended one's refusal carries its last console lines."""
    ended = job.state not in ACTIVE_STATES
    return require_running_job(job, needs, ended_tail(backend, job.job_id) if ended else None)


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
