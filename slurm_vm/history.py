"""VMs that ended, from Slurm's accounting storage: `slurm-vm list --all` and `status` of a VM Slurm forgot.

slurmctld forgets an ended job after MinJobAge; sacct keeps it. One sacct call gives every run of the
user's jobs in the window; VM jobs are the ones whose comment carries slurm-vm's prefix (stored with
AccountingStoreFlags=job_comment), or, where the site stores no comments, whose job name is `vm-NAME`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, fields

from .config import Config
from .errors import EXIT_USAGE, NotFound, NotYours, SlurmVmError
from .lifecycle import VMRecord, with_checkpoints
from .limits import JOB_NAME_PREFIX
from .slurm import SlurmBackend
from .slurm.accounting import AccountedRun, accounted_runs
from .slurm.cli import CliBackend
from .slurm.states import SACCT_STATES as STATES
from .transport import is_vm_comment

DEFAULT_SINCE = "30d"
# `status NAME` looks this far back (sacct needs a start time; its default is today's midnight).
STATUS_SINCE = "2000-01-01T00:00:00"
UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# The launcher's exit codes (launcher.launcher.ExitCode), which sacct shows as ExitCode N:0 (docs/user-guide.md).
OUTCOMES = {0: "guest powered off", 3: "shut down on a signal", 4: "hard stop: guest ignored the power button",
            5: "hypervisor crashed", 6: "hypervisor did not start", 7: "refused on the node (see the job output)",
            8: "saved to a checkpoint", 9: "checkpoint unusable"}


class OptionError(SlurmVmError):
    """A bad --since or --state value."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class VMHistory:
    name: str
    job_id: int
    user: str
    state: str              # the last run's state
    start: str
    end: str
    elapsed: str
    nodes: tuple[str, ...]
    cpus: int
    memory: str
    time_limit: str
    exit_code: str          # the last run's launcher exit code as sacct shows it (N:signal): its batch step's
                            # (status), or the allocation's for a COMPLETED or FAILED run (list); "" if unknown
    outcome: str            # what that exit code means ("" when unknown)
    restarts: int           # runs before the last one (requeues after preemption, a checkpoint or a failed prolog)
    earlier_runs: tuple[str, ...]   # their states, oldest first
    checkpoints: int = 0
    checkpoint_bytes: int = 0

    def as_json(self) -> dict:
        """The fields by name, tuples as lists (by hand: dataclasses.asdict costs 0.2 s per 1,000 records)."""
        data = {name: getattr(self, name) for name in _HISTORY_FIELDS}
        data["nodes"] = list(self.nodes)
        data["earlier_runs"] = list(self.earlier_runs)
        return data


_HISTORY_FIELDS = tuple(f.name for f in fields(VMHistory))


def is_vm_run(run: AccountedRun) -> bool:
    if run.comment:
        return is_vm_comment(run.comment)
    return run.name.startswith(JOB_NAME_PREFIX)


def launcher_exit(run: AccountedRun) -> tuple[int, int] | None:
    """The launcher's (code, signal): its batch step's; the allocation's where sacct has no step (a completed or
    failed job's allocation carries the script's code); None when it never ran."""
    if run.launcher_exit is not None:
        return run.launcher_exit
    if run.state in ("COMPLETED", "FAILED") and run.start:
        return run.exit_code, run.exit_signal
    return None


def outcome_of(run: AccountedRun) -> str:
    if run.state == "CANCELLED" and not run.start:
        return "cancelled before it started"
    found = launcher_exit(run)
    if found is None or found[1]:
        return f"killed by signal {found[1]}" if found else ""
    return OUTCOMES.get(found[0], "")


def history_of(runs: list[AccountedRun]) -> list[VMHistory]:
    """One record per VM job (its runs grouped, the last one decides), by job id."""
    by_job: dict[int, list[AccountedRun]] = {}
    for run in runs:
        if is_vm_run(run):
            by_job.setdefault(run.job_id, []).append(run)
    return [_record(job_runs) for _, job_runs in sorted(by_job.items())]


def _record(runs: list[AccountedRun]) -> VMHistory:
    last = runs[-1]
    found = launcher_exit(last)
    name = last.name[len(JOB_NAME_PREFIX):] if last.name.startswith(JOB_NAME_PREFIX) else last.name
    return VMHistory(name=name, job_id=last.job_id, user=last.user, state=last.state, start=last.start,
                     end=last.end, elapsed=last.elapsed, nodes=last.nodes, cpus=last.cpus, memory=last.memory,
                     time_limit=last.time_limit, exit_code=f"{found[0]}:{found[1]}" if found else "",
                     outcome=outcome_of(last), restarts=len(runs) - 1,
                     earlier_runs=tuple(r.state for r in runs[:-1]))


def since_time(text: str, now: datetime.datetime | None = None) -> str:
    """`--since`: 30m, 12h, 7d, 2w back from now, or a date YYYY-MM-DD[THH:MM[:SS]] -> sacct's -S form."""
    now = now or datetime.datetime.now()
    text = text.strip()
    number, unit = text[:-1], text[-1:].lower()
    if unit in UNITS and number.isdigit() and 0 < int(number) <= 100000:
        return (now - datetime.timedelta(seconds=int(number) * UNITS[unit])).strftime("%Y-%m-%dT%H:%M:%S")
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.datetime.strptime(text, fmt).strftime("%Y-%m-%dT%H:%M:%S")
        except ValueError:
            continue
    raise OptionError(f"--since: {text[:40]!r} is not a time; give 30m, 12h, 7d, 2w or a date like 2026-01-31")


def parse_states(text: str | None) -> frozenset[str]:
    """`--state`: a comma-separated list of job states (any case); empty means every state."""
    if not text:
        return frozenset()
    wanted = {s.strip().upper() for s in text.split(",") if s.strip()}
    unknown = sorted(wanted - set(STATES))
    if unknown:
        raise OptionError(f"--state: unknown state {unknown[0][:40]!r}; use one or more of {', '.join(STATES)}")
    return frozenset(wanted)


def list_history(cli: CliBackend, user: str | None, since: str, states: frozenset[str] = frozenset(),
                 config: Config | None = None) -> list[VMHistory]:
    """The VM jobs of `user` (None: every user's, as far as sacct shows them) since `since` (sacct's form)."""
    records = [r for r in history_of(accounted_runs(cli, user, since)) if not states or r.state in states]
    return with_checkpoints(records, config)


def ended_vm(cli: CliBackend, ref: str, user: str, config: Config | None = None) -> VMHistory | None:
    """A VM by job id or name (the newest of that name) from the accounting storage; None when it has none;
    NotYours for another user's job id (root may name any)."""
    if ref.isdigit():
        found = history_of(accounted_runs(cli, None, STATUS_SINCE, job_ids=(int(ref),), steps=True))
        if found and user != "root" and found[0].user != user:
            raise NotYours(f"job {ref} is VM {found[0].name} of user {found[0].user}: not your VM")
    else:
        owner = None if user == "root" else user
        found = history_of(accounted_runs(cli, owner, STATUS_SINCE, job_name=JOB_NAME_PREFIX + ref, steps=True))
    return with_checkpoints([found[-1]], config)[0] if found else None


@dataclass(frozen=True)
class Listing:
    """`list --all`: the accounting storage's records, or (without one) what slurmctld still knows and why."""
    history: list[VMHistory]
    live: list[VMRecord]     # only without accounting storage
    note: str = ""


def cli_of(config: Config) -> CliBackend:
    """sacct is asked through the command line whatever slurm.backend says (pyslurm has no accounting API here)."""
    return CliBackend(timeout=config.slurm.command_timeout, bin_dir=config.slurm.bin_dir)


def history_or_live(backend: SlurmBackend, config: Config, user: str | None, since: str,
                    states: frozenset[str]) -> Listing:
    from .lifecycle import list_vms
    from .slurm.accounting import AccountingDisabled
    try:
        return Listing(list_history(cli_of(config), user, since_time(since), states, config), [])
    except AccountingDisabled:
        live = [r for r in list_vms(backend, user, True, config) if not states or r.state in states]
        return Listing([], live, "this cluster keeps no job accounting (sacct: accounting storage is disabled); "
                                 "showing the VMs slurmctld still knows, which forgets ended ones after a while")


def ended_status(config: Config, ref: str, user: str, missing: NotFound) -> tuple[VMHistory, list[dict]]:
    """`status` of a VM slurmctld no longer knows, with its checkpoints; `missing` (its NotFound) when the
    accounting storage has none either."""
    from .checkpoint.listing import job_checkpoints, owner_uid
    from .slurm.accounting import AccountingDisabled
    try:
        found = ended_vm(cli_of(config), ref, user, config)
    except AccountingDisabled:
        raise NotFound(f"{missing}; this cluster keeps no job accounting, so it cannot tell about older VMs") from None
    if found is None:
        raise missing
    return found, job_checkpoints(config.checkpoint.user_dir(found.user), found.job_id, owner_uid(found.user))
