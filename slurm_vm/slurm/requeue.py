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

from dataclasses import dataclass

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
