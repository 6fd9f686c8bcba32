"""`slurm-vm checkpoint`: the client side (login node, as the user) and the node-side relay.

    slurm-vm checkpoint NAME|JOBID          save the running VM; it keeps running
    slurm-vm checkpoint NAME|JOBID --stop   save it and end the run: the job is requeued and held
    slurm-vm checkpoint NAME|JOBID --drop   remove the job's checkpoints (also of jobs Slurm forgot)
    slurm-vm checkpoint --list              every checkpoint in your checkpoint dir, with its job's state

A save goes `srun --jobid=J --overlap` to `slurm-vm checkpoint-relay J` on the VM's node, which asks the
launcher over its control socket (hypervisor/control_socket.py) and prints the launcher's JSON answer.
"""

from __future__ import annotations

import json
import os
import sys
import time

from .config import Config
from .errors import EXIT_USAGE, NotFound, SlurmError, SlurmVmError
from .lifecycle import check_job_id, node_command, spec_of_job
from .limits import CONTROL_SOCKET
from .slurm import JobInfo, SlurmBackend
from .slurm.states import ACTIVE_STATES, RESTARTING_STATES
from .vmaccess import owned_vm, require_running
from .checkpoint.drop import drop_job
from .checkpoint.flow import SAVE_TIMEOUT
from .checkpoint.listing import JobCheckpoints, user_checkpoints

RELAY_TIMEOUT = SAVE_TIMEOUT + 300       # the save, the overlay's copy, srun's own start


class CheckpointUnavailable(SlurmVmError):
    """This site or this VM has no checkpoints (no checkpoint.dir, a spec without checkpointing)."""

    exit_code = EXIT_USAGE


class CheckpointFailed(SlurmVmError):
    """The launcher could not save the VM (it says whether the guest runs on)."""


def user_dir_of(config: Config, user: str) -> str:
    user_dir = config.checkpoint.user_dir(user)
    if user_dir is None:
        raise CheckpointUnavailable("this site has no checkpoint.dir: VMs cannot be checkpointed here; ask the "
                                    "admins (docs/checkpoint.md)")
    return user_dir


# --- save ------------------------------------------------------------------------------------------------

def checkpoint_vm(backend: SlurmBackend, config: Config, ref: str, user: str, stop: bool) -> str:
    """Ask the VM's launcher to save it; the one line to print."""
    job = owned_vm(backend, ref, user)
    user_dir_of(config, job.user)
    spec = spec_of_job(job)
    if spec is not None and not spec.checkpoints:
        raise CheckpointUnavailable(f"VM {job.vm_name} was submitted without checkpointing: add "
                                    "`on_preempt: checkpoint` (or `on_timeout: checkpoint`) to its spec and resubmit")
    node = require_running(backend, job, "checkpoint it")
    argv = [config.slurm_vm_command, "checkpoint-relay", str(job.job_id), *(["--stop"] if stop else [])]
    proc = node_command(job, node, argv, RELAY_TIMEOUT)
    return describe_answer(job, parse_relay_output(proc.stdout, proc.stderr, node))


def parse_relay_output(stdout: str, stderr: str, node: str) -> dict:
    try:
        answer = json.loads(stdout)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise SlurmError(f"no answer from the VM's launcher on {node}: {' '.join(stderr.split()) or 'nothing said'}")
    return answer


def describe_answer(job: JobInfo, answer: dict) -> str:
    """One line from the launcher's answer; a failure raises CheckpointFailed with the launcher's reason."""
    if not answer["ok"]:
        raise CheckpointFailed(f"VM {job.vm_name} (job {job.job_id}): {answer.get('error', 'no reason given')}")
    head = (f"checkpoint of VM {job.vm_name} (job {job.job_id}): {answer['path']}, "
            f"{answer['size_bytes'] / 2**20:.1f} MiB, saved in {answer['seconds']:.1f}s")
    if answer.get("because"):
        return head + f"; the job was {answer['because']}ed meanwhile and continues from it after its requeue"
    if answer.get("ended"):
        j = job.job_id
        return head + (f"; the VM stopped and job {j} waits, held: `scontrol release {j}` continues it "
                       f"(any node); `scancel {j}` then `slurm-vm checkpoint --drop {j}` gives it up")
    if not answer.get("resumed"):
        raise CheckpointFailed(head + "; but the guest could not be resumed: see the job's output")
    return head + f"; the guest was paused {answer['paused_seconds']:.1f}s and keeps running"


def relay(job_dir: str, stop: bool) -> int:
    """Node side (run by srun as the user, inside the job): the launcher's answer as JSON on stdout."""
    from .hypervisor.control_socket import RequestError, ask
    path = os.path.join(job_dir, CONTROL_SOCKET)
    try:
        answer = ask(path, {"op": "checkpoint", "stop": stop}, RELAY_TIMEOUT)
    except FileNotFoundError:
        answer = {"ok": False, "error": "the VM is not running on this node yet (starting or restoring); "
                                        "try again in a moment"}
    except (OSError, RequestError) as exc:
        answer = {"ok": False, "error": f"cannot reach the VM's launcher: {exc}"}
    print(json.dumps(answer), flush=True)
    return 0 if answer["ok"] else 1


# --- drop and list ---------------------------------------------------------------------------------------

def drop(backend: SlurmBackend, config: Config, ref: str, user: str) -> str:
    """Remove the checkpoints of one of the caller's jobs, from the caller's own checkpoint dir only. A job id
    that Slurm no longer knows (cancelled while pending, long ended) is looked up in that dir alone."""
    user_dir = user_dir_of(config, user)
    job: JobInfo | None = None
    if ref.isdigit():
        jobs = backend.jobs(job_ids=(int(ref),))
        if any(j.job_id == int(ref) for j in jobs):
            job = check_job_id(jobs, int(ref), user)
        job_id = int(ref)
    else:
        job = owned_vm(backend, ref, user)
        job_id = job.job_id
    before = user_checkpoints(user_dir).get(job_id)
    removed = drop_job(user_dir, job_id, os.getuid())
    if before is None:
        raise NotFound(f"job {job_id} has no checkpoints in {user_dir}; see `slurm-vm checkpoint --list`")
    after = (f"; job {job_id} is {job.state.lower()}: it boots afresh when it starts"
             if job is not None and job.state in RESTARTING_STATES else "")
    return f"dropped {len(removed)} checkpoint(s) of job {job_id} ({before.size_bytes / 2**20:.1f} MiB){after}"


def listing(backend: SlurmBackend, config: Config, user: str) -> list[dict]:
    """Every job with checkpoints in the caller's dir, with its VM name and state as Slurm knows them."""
    found = user_checkpoints(user_dir_of(config, user))
    jobs = {j.job_id: j for j in backend.jobs(user=user)} if found else {}
    return [row(c, jobs.get(job_id)) for job_id, c in sorted(found.items())]


def row(c: JobCheckpoints, job: JobInfo | None) -> dict:
    state = job.state if job is not None else "gone"
    data = c.as_json()
    data.update(name=job.vm_name if job is not None else "-", state=state,
                restores=state in RESTARTING_STATES and c.count > 0,
                kept_because=_why_kept(state, c))
    return data


def _why_kept(state: str, c: JobCheckpoints) -> str:
    if c.count == 0:
        return "unfinished saves only"
    if state in RESTARTING_STATES:
        return "restores when the job starts"
    if state in ACTIVE_STATES:
        return "the running VM's latest save"
    return "its job ended without restoring it: `--drop` removes it"


def print_listing(rows: list[dict], as_json: bool) -> None:
    from .output import print_json, print_table
    if as_json:
        print_json(rows)
        return
    if not rows:
        print("no checkpoints in your checkpoint dir", file=sys.stdout)
        return
    print_table(("JOBID", "NAME", "STATE", "CHECKPOINTS", "SIZE", "SAVED", "NOTE"),
                [(str(r["job_id"]), r["name"], r["state"], f"{r['count']}" + (f" (+{r['unfinished']} unfinished)"
                  if r["unfinished"] else ""), f"{r['size_bytes'] / 2**20:.1f} MiB",
                  time.strftime("%Y-%m-%d %H:%M", time.localtime(r["newest"])) if r["newest"] else "-",
                  r["kept_because"]) for r in rows])
