"""Finished jobs from Slurm's accounting storage: `sacct [-X] -D -P -n` with explicit fields, parsed by position.

`-X` gives the allocation lines only (list --all); without it each is followed by its steps' lines (status of
one job), of which only `<id>.batch` is used: its exit code is the batch script's, i.e. the launcher's (the
allocation's is 0:0 for a cancelled or timed-out job). `-D` gives
every run of a requeued job (a preempted run, then the run after the requeue), oldest first. Fields are
separated by the ASCII unit separator (`--delimiter`), which no Slurm field can contain; Comment (the user's, free text) is the last field. Without accounting
storage sacct refuses with "accounting storage is disabled" (22.05 and 24.11): AccountingDisabled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import hostlist

from ..errors import SlurmError
from .cli import SEP, CliBackend
from .states import SACCT_STATES

SACCT_FIELDS = ("JobIDRaw", "JobName", "User", "State", "Submit", "Start", "End", "Elapsed", "NodeList",
                "AllocCPUS", "ReqMem", "Timelimit", "ExitCode", "Reason", "Comment")
DISABLED_MARK = "accounting storage is disabled"
# What sacct prints for a time or node list that does not exist (a job that never started).
NO_VALUE = {"Unknown", "None", "None assigned", "(null)", ""}


class AccountingDisabled(SlurmError):
    """The cluster keeps no accounting storage (AccountingStorageType=accounting_storage/none)."""


@dataclass(frozen=True)
class AccountedRun:
    """One run of one job as the accounting storage recorded it."""
    job_id: int
    name: str
    user: str
    state: str              # first word: COMPLETED, CANCELLED, TIMEOUT, FAILED, PREEMPTED, REQUEUED, NODE_FAIL, ...
    state_detail: str       # the rest, e.g. "by 4201" after CANCELLED
    submit: str
    start: str
    end: str
    elapsed: str
    nodes: tuple[str, ...]
    cpus: int
    memory: str
    time_limit: str
    exit_code: int          # the allocation's exit status
    exit_signal: int
    reason: str
    comment: str
    launcher_exit: tuple[int, int] | None = None   # the batch step's (code, signal): the launcher is exec'd there


def sacct_argv(sacct: str, user: str | None, since: str, job_ids: tuple[int, ...] = (),
               job_name: str | None = None, steps: bool = False) -> list[str]:
    """`user` None: every user's jobs, as far as the accounting storage shows them to the caller. `steps`: the
    steps' lines too (the batch step's exit code), which costs slurmdbd ~1 ms per job: for one job, not a list."""
    argv = [sacct, *(() if steps else ("-X",)), "-D", "-P", "-n", f"--delimiter={SEP}", "-o",
            ",".join(SACCT_FIELDS)]
    argv += ["-u", user] if user else ["-a"]
    if job_ids:
        argv += ["-j", ",".join(str(j) for j in job_ids)]
    if job_name:
        argv += [f"--name={job_name}"]
    # Without -S sacct's window starts at today's midnight (at the epoch with -j); with -s it needs an end too.
    return [*argv, "-s", ",".join(SACCT_STATES), "-S", since, "-E", "now"]


def _value(text: str) -> str:
    text = text.strip()
    return "" if text in NO_VALUE else text


def _exit_code(text: str) -> tuple[int, int]:
    code, _, sig = text.strip().partition(":")
    return (int(code) if code.isdigit() else 0, int(sig) if sig.isdigit() else 0)


def parse_sacct_line(line: str) -> AccountedRun | None:
    """A job allocation's line; None for a step's line, an array or het job's (123_4, 123+1: never VM jobs)."""
    parts = line.split(SEP, len(SACCT_FIELDS) - 1)
    if len(parts) != len(SACCT_FIELDS) or not parts[0].strip().isdigit():
        return None
    v = dict(zip(SACCT_FIELDS, parts))
    state, _, detail = v["State"].strip().partition(" ")
    node_text = _value(v["NodeList"])
    code, sig = _exit_code(v["ExitCode"])
    cpus = v["AllocCPUS"].strip()
    return AccountedRun(job_id=int(v["JobIDRaw"]), name=v["JobName"].strip(), user=v["User"].strip(), state=state,
                        state_detail=detail.strip(), submit=_value(v["Submit"]), start=_value(v["Start"]),
                        end=_value(v["End"]), elapsed=v["Elapsed"].strip(),
                        nodes=tuple(hostlist.expand_hostlist(node_text)) if node_text else (),
                        cpus=int(cpus) if cpus.isdigit() else 0, memory=_value(v["ReqMem"]),
                        time_limit=_value(v["Timelimit"]), exit_code=code, exit_signal=sig,
                        reason=_value(v["Reason"]), comment=_value(v["Comment"]))


def parse_sacct(text: str) -> list[AccountedRun]:
    """Allocation lines in order, each with the exit code of the batch step line that follows it."""
    runs: list[AccountedRun] = []
    for line in text.splitlines():
        run = parse_sacct_line(line)
        if run is not None:
            runs.append(run)
            continue
        first = line.split(SEP, 1)[0].strip()
        if runs and first == f"{runs[-1].job_id}.batch" and SEP in line:
            fields = dict(zip(SACCT_FIELDS, line.split(SEP, len(SACCT_FIELDS) - 1)))
            text = fields.get("ExitCode", "").strip()   # empty: the step never ran (a prolog failed)
            runs[-1] = replace(runs[-1], launcher_exit=_exit_code(text) if text else None)
    return runs


def accounted_runs(cli: CliBackend, user: str | None, since: str, job_ids: tuple[int, ...] = (),
                   job_name: str | None = None, steps: bool = False) -> list[AccountedRun]:
    """Every run of the matching jobs, oldest first; AccountingDisabled without accounting storage."""
    try:
        out = cli._run(sacct_argv(cli._cmd("sacct"), user, since, job_ids, job_name, steps))
    except SlurmError as exc:
        if DISABLED_MARK in str(exc):
            raise AccountingDisabled("this cluster keeps no job accounting (sacct: Slurm accounting storage is "
                                     "disabled)") from None
        raise
    return parse_sacct(out)
