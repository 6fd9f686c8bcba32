"""`slurm-vm checkpoint` in the launcher: save the running guest and resume it, or (`--stop`) save it and end the
run with the job requeued and held, so that `scontrol release` continues the VM later (any node).

Runs in the launcher's main loop (hypervisor/control_socket.py hands it the request), so it never overlaps a
preemption's or time limit's save. A stop signal that arrives during a manual save is handled after it: when
the signal asks for a checkpoint (preemption, `on_timeout: checkpoint`), the guest is still paused in exactly the
state just saved, so the job ends with this checkpoint instead of saving again.
"""

from __future__ import annotations

import os
import time
from typing import Protocol

from ..errors import HypervisorError, SlurmVmError
from ..hypervisor.control_socket import Request
from ..hypervisor.definition import VMDefinition
from ..hypervisor.runtime import Runtime, say
from ..slurm.requeue import JobControl
from . import flow, quiesce
from .control import CheckpointControl
from .drop import saving
from .vmm import Snapshotter, snapshotter

CHECKPOINTED_EXIT = 8        # launcher.ExitCode.CHECKPOINTED
ANSWER_WAIT = 10.0           # seconds for the control socket to send the answer
RELAY_GRACE = 1.0            # ... and for the relay to print it before the requeue ends its step


class RunningVM(Protocol):
    """What a manual checkpoint needs of the launcher that runs the VM (and nothing more)."""
    defn: VMDefinition
    checkpoint: CheckpointControl       # the launcher's checkpoint decisions
    requested: object | None            # set once a signal asked the VM to stop
    request_signal: str                 # that signal's name


def refusal(launcher: RunningVM, runtime: Runtime, stop: bool) -> str | None:
    """Why this VM cannot be checkpointed by hand now (None: it can)."""
    defn, control = launcher.defn, launcher.checkpoint
    if control.settings is None:
        return (f"VM {defn.name} runs without checkpoints (its spec has neither `on_preempt: checkpoint` nor "
                "`on_timeout: checkpoint`, or this site has no checkpoint.dir): add one to the spec and resubmit")
    if launcher.requested is not None:
        return f"VM {defn.name} is already stopping ({launcher.request_signal}); no checkpoint now"
    if control.settings.vm_count > 1:
        return (f"VM {defn.name} is one of {control.settings.vm_count} VMs of its job: `slurm-vm checkpoint` saves "
                "single-VM jobs only for now")
    try:
        snap = snapshotter(runtime)
    except HypervisorError as exc:
        return f"VM {defn.name}: {exc}"
    if not stop and not snap.keeps_running:
        return (f"VM {defn.name} runs on {snap.vmm}, which cannot continue the guest after a save: "
                "use `slurm-vm checkpoint --stop`")
    return None


def handle(request: Request, launcher: RunningVM, runtime: Runtime) -> int | None:
    """Work on one control request; the launcher's exit code when the run ends here (None: it goes on)."""
    try:
        if request.op != "checkpoint":
            request.fail(f"unknown request {request.op!r}")
            return None
        stop = bool(request.args.get("stop", False))
        why = refusal(launcher, runtime, stop)
        if why:
            request.fail(why)
            return None
        return _checkpoint(request, launcher, runtime, stop)
    finally:
        request.fail("the launcher could not finish the request")      # a no-op once answered


def _checkpoint(request: Request, launcher: RunningVM, runtime: Runtime, stop: bool) -> int | None:
    defn, control = launcher.defn, launcher.checkpoint
    settings = control.settings
    snap = snapshotter(runtime)
    started = time.monotonic()
    say(f"manual checkpoint{' and stop' if stop else ''}: pausing the guest and saving it to {settings.user_dir}")
    try:
        with saving(settings.user_dir, defn.job_id, os.getuid()):
            frozen = quiesce.freeze(runtime)
            snap.pause()
            path, manifest = flow.save(defn, settings, snap, runtime.accelerator, "manual", say, frozen)
    except (HypervisorError, SlurmVmError, OSError) as exc:
        resumed = _resume(snap)
        if resumed:
            quiesce.thaw(runtime, quiet=True)
        say(f"manual checkpoint failed: {exc}; " + ("the guest was resumed" if resumed else "cannot resume it"))
        request.fail(f"the save failed ({exc}); " + ("the guest was resumed and keeps running" if resumed else
                                                     "the guest could not be resumed: see the job's output"))
        return None
    saved = time.monotonic() - started
    facts = {"path": path, "size_bytes": manifest.total_size, "seconds": round(saved, 2)}
    say(f"checkpoint {path} written in {saved:.2f}s ({manifest.total_size >> 20} MiB)")
    # Answer before a requeue: it ends every step of the job, the relay's (`srun --overlap`) too.
    if stop:
        _end(runtime)
        _answer_and_wait(request, **facts, paused_seconds=round(saved, 2), ended=True)
        _requeue(flow.job_control(defn, settings), hold=True)
        return CHECKPOINTED_EXIT
    if launcher.requested is not None and control.wanted():
        say(f"{control.trigger} during the manual save: the job ends with this checkpoint")
        _end(runtime)
        _answer_and_wait(request, **facts, paused_seconds=round(saved, 2), ended=True, because=control.trigger)
        decision = flow.job_control(defn, settings).decision(control.trigger)
        if decision.by_launcher:
            _requeue(flow.job_control(defn, settings), hold=False)
        else:
            say(f"{decision.why}: it continues from the checkpoint when it starts again")
        return CHECKPOINTED_EXIT
    if not _resume(snap):
        request.answer(**facts, paused_seconds=round(saved, 2), ended=False, resumed=False)
        return None
    if frozen:
        quiesce.thaw(runtime)
    paused = time.monotonic() - started
    say(f"the guest continues (paused {paused:.2f}s)")
    request.answer(**facts, paused_seconds=round(paused, 2), ended=False, resumed=True)
    return None


def _answer_and_wait(request: Request, **facts: object) -> None:
    """Answer, and give the relay a moment to print it and end its step."""
    request.answer(**facts)
    request.sent.wait(ANSWER_WAIT)
    time.sleep(RELAY_GRACE)


def _resume(snap: Snapshotter) -> bool:
    """After a completed (or failed) save: the VMM takes its disks back and the vCPUs run on."""
    try:
        snap.resume()
        return True
    except HypervisorError as exc:
        say(f"cannot resume the guest: {exc}")
        return False


def _end(runtime: Runtime) -> None:
    try:
        runtime.hard_stop()
    except HypervisorError:
        pass


def _requeue(job: JobControl, hold: bool) -> None:
    """`scontrol requeuehold` (--stop: the job waits, held, until `scontrol release`) or `requeue`."""
    try:
        job.requeue(hold)
        say("requeued the job, held: `scontrol release` continues the VM from its checkpoint" if hold else
            "requeued the job: it continues from the checkpoint when it starts again")
    except SlurmVmError as exc:
        say(f"could not requeue the job ({exc}); the checkpoint stays")
