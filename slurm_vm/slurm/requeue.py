"""After a checkpoint: does the launcher requeue the job (`scontrol requeue`), or does Slurm?

Measured on the namespace cluster and read in Slurm's source (docs/checkpoint.md, "Slurm versions"):
- Time limit (and a manual checkpoint): nothing requeues the job but the job itself.
- Preemption, job still in its GraceTime (PreemptTime set, not yet requeued):
  - Slurm >= 24.05 marks a job signalled at the start of its GraceTime (GRACE_PREEMPT) and requeues it when
    its batch script ends within the GraceTime (state PREEMPTED, then PENDING). A `scontrol requeue` by the job
    itself does not clear that mark: the next run is requeued again when it ends, so the job never completes.
    The launcher must only exit.
  - Slurm < 24.05 has no such mark: a job that ends within its GraceTime is ended (FAILED by the launcher's
    exit code), so the launcher requeues it.
- Preemption at the end of the GraceTime: Slurm has already requeued the job (JobState REQUEUED/PENDING, or
  Restarts beyond this run's); a second requeue would fail. The launcher only exits.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from ..errors import SlurmError

from .states import REQUEUED_STATES

SLURM_REQUEUES_IN_GRACE = (24, 5)     # Slurm commit a689104d "Treat jobs completing after being signalled for
#                                       GraceTime as preempted", first released in 24.05


@dataclass(frozen=True)
class RequeueDecision:
    by_launcher: bool     # run `scontrol requeue`
    why: str              # one line for the job output


def slurm_version(text: str) -> tuple[int, int] | None:
    """`scontrol --version` prints `slurm 24.11.5` (or `slurm-wlm 22.05.8` on Debian)."""
    words = text.split()
    if len(words) != 2:
        return None
    parts = words[1].split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]), int(parts[1])


def already_requeued(fields: dict[str, str], restart_count: int) -> bool:
    restarts = fields.get("Restarts", "0")
    return fields.get("JobState", "") in REQUEUED_STATES or (restarts.isdigit() and int(restarts) > restart_count)


def decide(reason: str, fields: dict[str, str] | None, restart_count: int,
           version: tuple[int, int] | None) -> RequeueDecision:
    """`fields`: `scontrol show job -o` after the save (None when Slurm could not be asked)."""
    if reason != "preempt":
        return RequeueDecision(True, "the job requeues itself")
    if fields is not None and already_requeued(fields, restart_count):
        return RequeueDecision(False, "Slurm has requeued the preempted job")
    if version is not None and version >= SLURM_REQUEUES_IN_GRACE:
        return RequeueDecision(False, f"Slurm {version[0]}.{version[1]:02d} requeues a job that ends in its "
                                      "preemption GraceTime")
    return RequeueDecision(True, "Slurm before 24.05 ends a job that ends in its GraceTime: the job requeues itself")


def job_fields(text: str) -> dict[str, str]:
    """`scontrol show job -o` prints one line of Key=Value pairs (the stable form on every Slurm version)."""
    out = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep and key not in out:
            out[key] = value
    return out


def preempted(fields: dict[str, str], restart_count: int) -> bool:
    if fields.get("PreemptTime", "None") not in ("None", "Unknown", ""):
        return True
    return already_requeued(fields, restart_count)


@dataclass(frozen=True)
class JobControl:
    """A job's own Slurm calls from inside it (the launcher): its state, and its requeue after a checkpoint."""
    job_id: int
    restart_count: int          # SLURM_JOB_RESTART_COUNT of this run
    scontrol: str = "scontrol"
    timeout: int = 30

    def _run(self, *args: str) -> str:
        try:
            proc = subprocess.run([self.scontrol, *args], capture_output=True, text=True, timeout=self.timeout,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SlurmError(f"scontrol {args[0]}: {exc}") from None
        if proc.returncode != 0:
            raise SlurmError(f"scontrol {args[0]} failed: {' '.join(proc.stderr.split())}")
        return proc.stdout

    def fields(self) -> dict[str, str]:
        return job_fields(self._run("show", "job", "-o", str(self.job_id)))

    def is_preemption(self) -> bool:
        """During a preemption's GraceTime Slurm has set the job's PreemptTime; at its end Slurm requeues the job
        (JobState REQUEUED/PENDING, or Restarts beyond this run's) before the SIGTERM. A plain scancel does
        neither."""
        return preempted(self.fields(), self.restart_count)

    def decision(self, reason: str) -> RequeueDecision:
        """After a save: requeue the job here, or leave it to Slurm."""
        try:
            fields: dict[str, str] | None = self.fields()
        except SlurmError:
            fields = None
        try:
            version = slurm_version(self._run("--version"))
        except SlurmError:
            version = None
        return decide(reason, fields, self.restart_count, version)

    def requeue(self, hold: bool = False) -> None:
        """`scontrol requeue`, or `requeuehold` (the job then waits, held, until `scontrol release`)."""
        self._run("requeuehold" if hold else "requeue", str(self.job_id))
