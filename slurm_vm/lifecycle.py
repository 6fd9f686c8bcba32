"""What the lifecycle commands do, on top of a SlurmBackend (the CLI only formats)."""

from __future__ import annotations

import getpass
import os
import subprocess
from dataclasses import asdict, dataclass

from . import transport
from .config import Config
from .errors import NotFound, SlurmError, ValidationError
from .limits import JOB_NAME_PREFIX, SERIAL_LOG
from .slurm import JobInfo, SlurmBackend
from .spec import VMSpec, parse_spec

ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}


@dataclass(frozen=True)
class VMRecord:
    name: str
    job_id: int
    state: str
    nodes: tuple[str, ...]
    cpus: int
    memory: str
    uptime: str
    time_limit: str
    reason: str
    addresses: tuple[str, ...]
    user: str

    def as_json(self) -> dict:
        data = asdict(self)
        data["nodes"] = list(self.nodes)
        data["addresses"] = list(self.addresses)
        return data


def current_user() -> str:
    return getpass.getuser()


def spec_of_job(job: JobInfo) -> VMSpec | None:
    """The spec carried inline in the comment (None when only a digest travels there)."""
    try:
        text = transport.inline_spec(job.comment)
        return parse_spec(text, f"job {job.job_id}") if text is not None else None
    except (transport.TransportError, ValidationError):
        return None


def record_of(job: JobInfo) -> VMRecord:
    spec = spec_of_job(job)
    addresses = tuple(n.address.split("/")[0] for n in spec.networks if n.address) if spec else ()
    return VMRecord(name=job.vm_name, job_id=job.job_id, state=job.state, nodes=job.nodes, cpus=job.cpus,
                    memory=job.memory, uptime=job.time_used, time_limit=job.time_limit, reason=job.reason,
                    addresses=addresses, user=job.user)


def list_vms(backend: SlurmBackend, user: str | None, include_ended: bool = False) -> list[VMRecord]:
    jobs = [j for j in backend.jobs(user=user) if j.is_vm and (include_ended or j.state in ACTIVE_STATES)]
    return [record_of(j) for j in sorted(jobs, key=lambda j: j.job_id)]


def find_vm(backend: SlurmBackend, ref: str, user: str | None) -> JobInfo:
    """A VM job by job id, or by name (the newest active job of that name)."""
    if ref.isdigit():
        jobs = [j for j in backend.jobs(job_ids=(int(ref),)) if j.is_vm]
        if not jobs:
            raise NotFound(f"job {ref} is not a slurm-vm job (or no longer known to Slurm)")
        return jobs[0]
    jobs = [j for j in backend.jobs(user=user) if j.is_vm and j.name == JOB_NAME_PREFIX + ref]
    active = [j for j in jobs if j.state in ACTIVE_STATES]
    candidates = active or jobs
    if not candidates:
        raise NotFound(f"no VM named {ref!r}" + (f" for user {user}" if user else "") + "; see `slurm-vm list`")
    return max(candidates, key=lambda j: j.job_id)


def stop_vm(backend: SlurmBackend, job: JobInfo, force: bool) -> str:
    if job.state not in ACTIVE_STATES:
        raise NotFound(f"VM {job.vm_name} (job {job.job_id}) is not running ({job.state})")
    if force or job.state == "PENDING":
        backend.cancel(job.job_id)
        return f"cancelled job {job.job_id}"
    # SIGUSR2 to the batch step reaches the launcher only: ACPI power button, then the job ends COMPLETED.
    backend.signal(job.job_id, "USR2", batch_only=job_is_single_vm(job))
    return f"asked VM {job.vm_name} (job {job.job_id}) to shut down"


def job_is_single_vm(job: JobInfo) -> bool:
    return len(job.nodes) <= 1


def node_command(job: JobInfo, node: str, argv: list[str], timeout: int | None) -> subprocess.CompletedProcess:
    """Run a command as the user inside the running job on one of its nodes (srun --overlap)."""
    srun = ["srun", f"--jobid={job.job_id}", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={node}",
            "--quiet", *argv]
    try:
        return subprocess.run(srun, capture_output=timeout is not None, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise SlurmError("srun not found: install the Slurm client commands") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"reading from node {node} took longer than {timeout}s") from None


def serial_log_path(config: Config, job: JobInfo, node: str) -> str:
    return os.path.join(config.node_state_dir(node), "jobs", str(job.job_id), SERIAL_LOG)


def serial_tail(config: Config, job: JobInfo, lines: int = 20, timeout: int = 30) -> str:
    if job.state != "RUNNING" or not job.nodes:
        return ""
    node = job.nodes[0]
    proc = node_command(job, node, ["tail", "-n", str(lines), serial_log_path(config, job, node)], timeout)
    if proc.returncode != 0:
        raise SlurmError(f"cannot read the serial log on {job.nodes[0]}: {' '.join(proc.stderr.split())}")
    return proc.stdout
