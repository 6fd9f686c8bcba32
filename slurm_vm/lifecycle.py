"""What the lifecycle commands do, on top of a SlurmBackend (the CLI only formats)."""

from __future__ import annotations

import getpass
import os
import subprocess
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

from . import transport
from .config import Config
from .errors import Ambiguous, NotFound, NotRunning, NotYours, SlurmError, ValidationError
from .limits import JOB_NAME_PREFIX, SERIAL_LOG
from .slurm import JobInfo, SlurmBackend
from .slurm.srun import srun_in_job
from .slurm.states import ACTIVE_STATES
from .spec import VMSpec, parse_spec

SPEC_READERS = 8     # batch scripts `list` reads at once
R = TypeVar("R", bound=Any)   # a frozen dataclass with user, job_id, checkpoints, checkpoint_bytes


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
    checkpoints: int = 0            # complete checkpoints in the owner's checkpoint dir (when readable)
    checkpoint_bytes: int = 0
    guest_addresses: tuple[str, ...] = ()   # as the guest's agent reports them (shown only; list: DHCP guests)

    def as_json(self) -> dict:
        data = asdict(self)
        data["nodes"] = list(self.nodes)
        data["addresses"] = list(self.addresses)
        data["guest_addresses"] = list(self.guest_addresses)
        return data


def current_user() -> str:
    return getpass.getuser()


def spec_of_job(job: JobInfo) -> VMSpec | None:
    """The job's spec: read from its batch script by with_spec, or inline in a slurm-vm 1 comment;
    None when neither is at hand (another user's job, an ended one, a damaged one)."""
    try:
        text = job.spec_text if job.spec_text is not None else transport.inline_spec(job.comment)
        return parse_spec(text, f"job {job.job_id}") if text is not None else None
    except (transport.TransportError, ValidationError):
        return None


def with_spec(backend: SlurmBackend, job: JobInfo) -> JobInfo:
    """`job` with its spec text, read from its batch script: one RPC, which Slurm answers for the job's owner
    and root only (the comment carries only a salted digest). Unchanged when the script cannot be read."""
    if job.spec_text is not None or not job.is_vm or job.state not in ACTIVE_STATES:
        return job
    try:
        ref = transport.parse_comment(job.comment)
        text = ref.inline if ref.inline is not None else \
            transport.spec_from_script(backend.batch_script(job.job_id), ref)
    except (transport.TransportError, SlurmError):
        return job
    return replace(job, spec_text=text)


def with_specs(backend: SlurmBackend, jobs: list[JobInfo], reader: str) -> list[JobInfo]:
    """with_spec for each job `reader` may read (its own; root: all), a few RPCs at a time (command-line
    clients only: one process each; the pyslurm backend reads one after the other)."""
    from concurrent.futures import ThreadPoolExecutor
    from .slurm.cli import CliBackend
    mine = [j for j in jobs if reader == "root" or j.user == reader]
    if not mine:
        return jobs
    readers = SPEC_READERS if isinstance(backend, CliBackend) else 1
    with ThreadPoolExecutor(max_workers=min(readers, len(mine))) as pool:
        loaded = {j.job_id: j for j in pool.map(lambda j: with_spec(backend, j), mine)}
    return [loaded.get(j.job_id, j) for j in jobs]


def managed_addresses(backend: SlurmBackend, config: Config | None, jobs: list[JobInfo]) -> dict[int, tuple[str, ...]]:
    """Addresses slurm-vm handed out on networks with a `subnet`, from the jobs' AdminComment records
    (job-private segments have their own subnets, so only shared networks' addresses are named)."""
    from .networks.addresses import network_address_plan
    from .networks.allocation import COMMITTED, parse_holding
    if config is None or not jobs:
        return {}
    try:
        records = backend.records(tuple(j.job_id for j in jobs))
    except SlurmError:
        return {}
    out: dict[int, tuple[str, ...]] = {}
    for record in records:
        holding = parse_holding(record.admin_comment)
        if holding is None or holding.state != COMMITTED:
            continue
        found = []
        for (name, _), offsets in sorted(holding.offsets.items()):
            net = config.networks.get(name)
            if net is not None and net.subnet is not None:
                found += [network_address_plan(net).address(o).split("/")[0] for o in offsets]
        out[record.job_id] = tuple(found)
    return out


def record_of(job: JobInfo, managed: tuple[str, ...] = ()) -> VMRecord:
    """`managed`: the job's addresses from managed_addresses (static ones come from the spec too)."""
    spec = spec_of_job(job)
    static = tuple(n.address.split("/")[0] for n in spec.networks if n.address) if spec else ()
    addresses = tuple(dict.fromkeys(static + managed))
    return VMRecord(name=job.vm_name, job_id=job.job_id, state=job.state, nodes=job.nodes, cpus=job.cpus,
                    memory=job.memory, uptime=job.time_used, time_limit=job.time_limit, reason=job.reason,
                    addresses=addresses, user=job.user)


def list_vms(backend: SlurmBackend, user: str | None, include_ended: bool = False,
             config: Config | None = None) -> list[VMRecord]:
    jobs = [j for j in backend.jobs(user=user) if j.is_vm and (include_ended or j.state in ACTIVE_STATES)]
    jobs = with_specs(backend, jobs, current_user())
    managed = managed_addresses(backend, config, jobs)
    records = [record_of(j, managed.get(j.job_id, ())) for j in sorted(jobs, key=lambda j: j.job_id)]
    return with_checkpoints(records, config)


def with_checkpoints(records: list[R], config: Config | None) -> list[R]:
    """Each record (VMRecord, history.VMHistory) with the count and size of its job's checkpoints, read from
    its owner's checkpoint dir (other users' dirs are private: their VMs show none)."""
    from .checkpoint.listing import owner_uid, user_checkpoints
    if config is None or config.checkpoint.dir is None:
        return records
    found = {u: user_checkpoints(config.checkpoint.user_dir(u), owner_uid(u)) for u in {r.user for r in records}}
    out = []
    for r in records:
        c = found[r.user].get(r.job_id)
        out.append(replace(r, checkpoints=c.count, checkpoint_bytes=c.size_bytes) if c else r)
    return out


def find_vm(backend: SlurmBackend, ref: str, user: str | None) -> JobInfo:
    """A VM job by job id, or by name (the one active job of that name, else the newest ended one).

    Raises NotFound (no such VM, or not a slurm-vm job), NotYours (another user's job id; root may name any)
    and Ambiguous (the name matches several active jobs)."""
    if ref.isdigit():
        return check_job_id(backend.jobs(job_ids=(int(ref),)), int(ref), user)
    return choose_by_name(backend.jobs(user=user), ref, user)


def choose_by_name(jobs: list[JobInfo], name: str, user: str | None) -> JobInfo:
    named = [j for j in jobs if j.is_vm and j.name == JOB_NAME_PREFIX + name and (user is None or j.user == user)]
    active = sorted((j for j in named if j.state in ACTIVE_STATES), key=lambda j: j.job_id)
    if len(active) > 1:
        listed = ", ".join(f"{j.job_id} ({j.state})" for j in active)
        raise Ambiguous(f"VM name {name!r} matches jobs {listed}; give the job id instead of the name")
    candidates = active or named
    if not candidates:
        raise NotFound(f"no VM named {name!r}" + (f" for user {user}" if user else "") + "; see `slurm-vm list`")
    return max(candidates, key=lambda j: j.job_id)


def check_job_id(jobs: list[JobInfo], job_id: int, user: str | None) -> JobInfo:
    """The job `job_id` from Slurm's answer, if it is a VM job `user` may manage (root may manage any)."""
    job = next((j for j in jobs if j.job_id == job_id), None)
    if job is None:
        raise NotFound(f"no job {job_id} known to Slurm (ended jobs are forgotten after a while); "
                       "see `slurm-vm list --ended`")
    if not job.is_vm:
        raise NotFound(f"job {job_id} ({job.name}) is not a slurm-vm job; use squeue/scancel for it")
    if user is not None and user != "root" and job.user != user:
        raise NotYours(f"job {job_id} is VM {job.vm_name} of user {job.user}: not your VM")
    return job


def require_running(job: JobInfo, needs: str, last_lines: list[str] | None = None) -> str:
    """The node of a running VM; otherwise NotRunning with the job's state (and why it waits). For an ended
    VM, `last_lines` (its last console lines) travel as the error's details, printed on stdout."""
    if job.state == "RUNNING" and job.nodes:
        return job.nodes[0]
    if job.state in ACTIVE_STATES:
        why = f" (reason: {job.reason})" if job.reason and job.reason != "None" else ""
        raise NotRunning(f"VM {job.vm_name} is {job.state.lower()}{why}: {needs} once it runs (job {job.job_id})")
    raise NotRunning(f"VM {job.vm_name} (job {job.job_id}) has ended ({job.state})"
                     + ("; its last console lines are above" if last_lines else
                        "; its output file has the last console lines"), details=tuple(last_lines or ()))


def stop_vm(backend: SlurmBackend, job: JobInfo, force: bool) -> str:
    if job.state not in ACTIVE_STATES:
        raise NotRunning(f"VM {job.vm_name} (job {job.job_id}) has ended ({job.state})")
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
    srun = srun_in_job(job.job_id, node, argv)
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
