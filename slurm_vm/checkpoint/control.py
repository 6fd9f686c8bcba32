"""The launcher's checkpoint decisions: restore or boot, save or shut down. All steps live in flow.py."""

from __future__ import annotations

import os
import signal
import time

from ..errors import HypervisorError, SlurmVmError
from ..hypervisor.definition import VMDefinition
from ..hypervisor.runtime import say
from ..hypervisor.runtime import Runtime
from . import flow, group, quiesce
from .drop import saving
from .vmm import restoring_runtime, snapshotter

CHECKPOINTED_EXIT = 8        # launcher.ExitCode.CHECKPOINTED


class RestoreRefused(SlurmVmError):
    """The job's checkpoint cannot be used and the spec says on_restore_failure: fail."""


class CheckpointControl:
    def __init__(self, defn: VMDefinition):
        self.defn = defn
        self.settings = defn.checkpoint
        self.signal: int | None = None        # the first stop signal
        self.trigger: str | None = None       # preempt | timeout | none: what that signal turned out to be
        self.found = None
        self.checked = False
        self.accelerator = ""

    def on_signal(self, signum: int) -> None:
        """In the signal handler: remember the signal, decide later (wanted)."""
        if self.settings is not None and self.signal is None:
            self.signal = signum

    def wanted(self) -> bool:
        """Decide once, after a signal: save (and requeue) or shut down as before.

        SIGUSR1 is the time-limit warning, or the start of a preemption's GraceTime with
        PreemptParameters=send_user_signal; SIGTERM is a scancel, or the end of the GraceTime. Slurm marks a
        preemption in the job (PreemptTime, or the job already requeued): that tells them apart."""
        s, signum = self.settings, self.signal
        if s is None or signum is None or self.trigger is not None:
            return self.trigger is not None and self.trigger != "none"
        self.trigger = "none"
        if "checkpoint" not in (s.on_preempt, s.on_timeout) or signum not in (signal.SIGTERM, signal.SIGUSR1):
            return False
        try:
            preempted = flow.job_control(self.defn, s).is_preemption()
        except SlurmVmError as exc:
            say(f"cannot ask Slurm about the job ({exc}): taking {signal.Signals(signum).name} as "
                f"{'the time-limit warning' if signum == signal.SIGUSR1 else 'a scancel'}")
            preempted = False
        if preempted and s.on_preempt == "checkpoint":
            self.trigger = "preempt"
        elif not preempted and signum == signal.SIGUSR1 and s.on_timeout == "checkpoint":
            self.trigger = "timeout"
        elif not preempted and signum == signal.SIGTERM:
            say("SIGTERM without preemption (scancel): shutting down, no checkpoint")
        return self.trigger != "none"

    # -- restore -------------------------------------------------------------------------------------------
    def restoring_runtime(self, hypervisor: str, accelerator: str, cores: list[int]) -> Runtime | None:
        if self.settings is None or self.checked or self.settings.restart_count == 0:
            return None         # a job's checkpoints are made by its runs: the first run has none
        self.checked, self.accelerator = True, accelerator
        found, why = flow.find_restore(self.defn, self.settings, hypervisor, accelerator)
        if found is None:
            if why and not self.cold_boot_instead(why):
                raise RestoreRefused("not starting the VM")
            if not why:
                say(f"restart {self.settings.restart_count}: no checkpoint of this job; booting afresh")
            return None
        size = found.manifest.total_size
        say(f"restart {self.settings.restart_count}: checkpoint {found.path} verified ({size >> 20} MiB)")
        flow.put_overlay_in_place(self.defn, found)
        self.found = found
        runtime = restoring_runtime(hypervisor, self.defn, accelerator, cores, found)
        if self.settings.vm_count > 1 and hasattr(runtime, "before_resume"):
            runtime.before_resume = lambda: group.resume_together(  # type: ignore[attr-defined]
                os.path.dirname(found.path), self.settings.vm_index, self.settings.vm_count, say=say)
        return runtime

    def cold_boot_instead(self, why: str) -> bool:
        say(f"checkpoint refused: {why}")
        flow.back_to_fresh_overlay(self.defn)
        self.found = None
        if self.settings is not None and self.settings.on_restore_failure == "boot":
            say("booting the VM afresh (on_restore_failure: boot); the checkpoint stays")
            return True
        say("the job fails and the checkpoint stays (on_restore_failure: fail)")
        return False

    def running(self, runtime) -> None:
        if self.found is not None:
            if self.found.manifest.guest_frozen:
                quiesce.thaw_after_restore(runtime)
            if flow.restored(self.defn, self.found):
                whole = os.path.dirname(self.found.path) if self.settings.vm_count > 1 else self.found.path
                say(f"the guest continues; removed its checkpoint {whole}")
            else:
                say(f"the guest continues; its checkpoint {self.found.path} goes once every VM of the job runs")
            self.found = None

    # -- save ----------------------------------------------------------------------------------------------
    def save_and_end(self, runtime) -> int | None:
        """Save the guest and end the job so that it requeues; None when the save failed (guest resumed)."""
        reason = self.trigger if self.trigger not in (None, "none") else "manual"
        snap = snapshotter(runtime)
        started = time.monotonic()
        say(f"{reason}: pausing the guest and saving it to {self.settings.user_dir}")
        try:
            with saving(self.settings.user_dir, self.defn.job_id, os.getuid()):     # one save at a time
                frozen = quiesce.freeze(runtime)
                snap.pause()
                path, manifest = flow.save(self.defn, self.settings, snap, runtime.accelerator, reason, say, frozen)
        except (HypervisorError, SlurmVmError, OSError) as exc:
            say(f"checkpoint failed: {exc}; shutting the guest down instead")
            try:
                snap.resume()
                quiesce.thaw(runtime, quiet=True)
            except HypervisorError:
                pass
            return None
        say(f"checkpoint {path} written in {time.monotonic() - started:.2f}s "
            f"({manifest.total_size >> 20} MiB: state {manifest.state_size >> 20} MiB, overlay "
            f"{manifest.overlay.size >> 20} MiB)")
        try:
            runtime.hard_stop()
        except HypervisorError:
            pass
        if self.settings.vm_index > 0:      # a multi-VM job: its first launcher requeues it
            say("the job's checkpoint is complete; VM 0's launcher requeues the job")
            return CHECKPOINTED_EXIT
        decision = flow.job_control(self.defn, self.settings).decision(reason)
        if not decision.by_launcher:
            say(f"{decision.why}: it continues from the checkpoint when it starts again")
            return CHECKPOINTED_EXIT
        try:
            flow.job_control(self.defn, self.settings).requeue()
            say("requeued the job: it continues from the checkpoint when it starts again")
        except SlurmVmError as exc:
            say(f"could not requeue the job ({exc}); the checkpoint stays for a later requeue")
        return CHECKPOINTED_EXIT
