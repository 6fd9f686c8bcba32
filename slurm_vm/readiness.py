"""Waiting until a VM is really up: job state -> node -> VMM started -> guest ready.

"Guest ready" is a fixed line on the serial console (limits.GUEST_READY_MARKER): cloud-init prints it as
its final message (slurm-vm's vendor-data sets it), the tiny test guest prints it too; `--wait-for TEXT`
replaces it for images without cloud-init. The log is read on the VM's node through the job
(`srun --overlap grep`), so no shared filesystem is needed. `observe` and `render` are pure.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Callable

from .config import Config
from .errors import SlurmError
from .lifecycle import node_command, record_of, serial_log_path
from .limits import GUEST_READY_MARKER
from .slurm.states import ACTIVE_STATES
from .slurm import JobInfo, SlurmBackend


class Stage(enum.IntEnum):
    QUEUED = 0          # the job waits for resources (or has not started its step yet)
    RUNNING = 1         # the job runs on its node; the prolog/launcher prepare the VM
    VMM_STARTED = 2     # the hypervisor runs: the serial log exists
    GUEST_READY = 3     # the ready line is on the console


class Serial(enum.Enum):
    ABSENT = "absent"
    STARTED = "started"
    READY = "ready"


@dataclass(frozen=True)
class Progress:
    job_id: int
    vm_name: str
    stage: Stage
    state: str
    reason: str
    node: str
    elapsed: float


def observe(job: JobInfo, serial: Serial, elapsed: float) -> Progress:
    node = job.nodes[0] if job.nodes else ""
    if job.state != "RUNNING" or not node:
        stage = Stage.QUEUED
    elif serial is Serial.READY:
        stage = Stage.GUEST_READY
    elif serial is Serial.STARTED:
        stage = Stage.VMM_STARTED
    else:
        stage = Stage.RUNNING
    reason = job.reason if job.reason not in ("", "None") else ""
    return Progress(job.job_id, job.vm_name, stage, job.state, reason, node, elapsed)


def render(p: Progress) -> str:
    """One line: done steps ticked, the current one with an ellipsis, elapsed seconds."""
    if p.stage is Stage.QUEUED:
        state = p.state.lower() + (f" ({p.reason})" if p.reason else "")
        steps = [f"… job {state}"]
    else:
        steps = ["✓ job running", f"✓ node {p.node}"]
        steps.append("✓ VMM started" if p.stage >= Stage.VMM_STARTED else "… VMM starting")
        if p.stage >= Stage.VMM_STARTED:
            steps.append("✓ guest ready" if p.stage is Stage.GUEST_READY else "… guest booting")
    return f"VM {p.vm_name} (job {p.job_id}): " + " → ".join(steps) + f"  [{p.elapsed:.0f}s]"


def serial_state(config: Config, job: JobInfo, node: str, marker: str) -> Serial:
    """grep -F on the node: 0 found, 1 not yet, anything else (no log yet, step not possible yet) absent."""
    try:
        proc = node_command(job, node, ["grep", "-q", "-F", "--", marker, serial_log_path(config, job, node)],
                            config.slurm.command_timeout)
    except SlurmError:
        return Serial.ABSENT
    return {0: Serial.READY, 1: Serial.STARTED}.get(proc.returncode, Serial.ABSENT)


def wait_for_ready(backend: SlurmBackend, config: Config, job_id: int, marker: str | None, timeout: float,
                   report: Callable[[Progress], None] = lambda p: None, poll: float = 1.0) -> Progress:
    """Until the guest printed `marker` (default: the ready line); one report per poll."""
    marker = marker or GUEST_READY_MARKER
    started = time.monotonic()
    while True:
        jobs = backend.jobs(job_ids=(job_id,))
        job = jobs[0] if jobs else None
        if job is None or job.state not in ACTIVE_STATES:
            from .vmaccess import ended_tail
            tail = "".join(f"\n  | {line}" for line in ended_tail(backend, job_id))
            raise SlurmError(f"job {job_id} ended ({job.state if job else 'gone'}) before the VM was ready"
                             + (f"; its last console lines:{tail}" if tail else "; see its output file"))
        serial = Serial.ABSENT
        if job.state == "RUNNING" and job.nodes:
            serial = serial_state(config, job, job.nodes[0], marker)
        progress = observe(job, serial, time.monotonic() - started)
        report(progress)
        if progress.stage is Stage.GUEST_READY:
            return progress
        if progress.elapsed > timeout:
            raise SlurmError(f"VM {job.vm_name} (job {job_id}) was not ready after {timeout:.0f}s: "
                             + render(progress).split(": ", 1)[1])
        time.sleep(poll)


def how_to_connect(job: JobInfo, progress: Progress) -> str:
    record = record_of(job)
    lines = [f"VM {progress.vm_name} is ready on {progress.node} after {progress.elapsed:.0f}s:",
             f"  slurm-vm console {progress.vm_name}    # serial console (Ctrl-] detaches)"]
    if record.addresses:
        lines.append(f"  slurm-vm ssh {progress.vm_name}        # ssh to {record.addresses[0]} through {progress.node}")
    return "\n".join(lines)
