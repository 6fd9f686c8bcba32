"""Slurm through pyslurm (optional: pyslurm X.Y builds only against Slurm X.Y).

Written against pyslurm 25.11's documented API (JobSubmitDescription, Job, Jobs); it cannot be
exercised on the test machines, which have no Slurm 25.11. The command-line backend is the default.
"""

from __future__ import annotations

import pyslurm  # noqa: F401  (ImportError here makes get_backend fall back to the CLI)

from ..errors import SlurmError
from .base import JobInfo

_SIGNALS = {"TERM": 15, "KILL": 9, "USR1": 10, "USR2": 12, "INT": 2, "CONT": 18}


class PyslurmBackend:
    def submit(self, script: str, args: tuple[str, ...]) -> int:
        options = _sbatch_args_to_description(args)
        try:
            desc = pyslurm.JobSubmitDescription(script=script, **options)
            return int(desc.submit())
        except pyslurm.RPCError as exc:
            raise SlurmError(f"submission failed: {exc}") from None

    def jobs(self, user: str | None = None, job_ids: tuple[int, ...] = (), node: str | None = None) -> list[JobInfo]:
        try:
            loaded = pyslurm.Jobs.load()
        except pyslurm.RPCError as exc:
            raise SlurmError(f"cannot list jobs: {exc}") from None
        out = []
        for job in loaded.values():
            if user and job.user_name != user:
                continue
            if job_ids and job.id not in job_ids:
                continue
            nodes = tuple(pyslurm.utils.expand_range_str(job.nodes)) if job.nodes else ()
            if node and node not in nodes:
                continue
            out.append(JobInfo(job_id=job.id, name=job.name or "", user=job.user_name or "", state=job.state or "",
                               nodes=nodes, cpus=job.cpus or 0, memory=str(job.memory or ""),
                               time_limit=str(job.time_limit or ""), comment=job.comment or ""))
        return out

    def signal(self, job_id: int, signal: str, batch_only: bool = False) -> None:
        try:
            pyslurm.Job(job_id).send_signal(_SIGNALS[signal], steps="batch" if batch_only else "children")
        except pyslurm.RPCError as exc:
            raise SlurmError(f"cannot signal job {job_id}: {exc}") from None

    def cancel(self, job_id: int) -> None:
        try:
            pyslurm.Job(job_id).cancel()
        except pyslurm.RPCError as exc:
            raise SlurmError(f"cannot cancel job {job_id}: {exc}") from None

    def batch_script(self, job_id: int) -> str:
        try:
            return pyslurm.Job(job_id).get_batch_script()
        except pyslurm.RPCError as exc:
            raise SlurmError(f"cannot read the batch script of job {job_id}: {exc}") from None

    def records(self, job_ids: tuple[int, ...] = ()) -> list:
        raise SlurmError("the pyslurm backend does not read AdminComment records")

    def output_path(self, job_id: int) -> str | None:
        try:
            return pyslurm.Job.load(job_id).standard_output or None
        except pyslurm.RPCError:
            return None


_OPTION_NAMES = {"job-name": "name", "nodes": "nodes", "ntasks-per-node": "ntasks_per_node",
                 "cpus-per-task": "cpus_per_task", "mem": "memory_per_node", "signal": "signal",
                 "comment": "comment", "time": "time_limit", "partition": "partitions", "account": "account",
                 "qos": "qos", "output": "standard_output", "error": "standard_error"}


def _sbatch_args_to_description(args: tuple[str, ...]) -> dict:
    options: dict = {}
    for arg in args:
        if arg == "--parsable":
            continue
        if not arg.startswith("--") or "=" not in arg:
            raise SlurmError(f"the pyslurm backend accepts only --name=value options, not {arg!r}")
        key, value = arg[2:].split("=", 1)
        if key not in _OPTION_NAMES:
            raise SlurmError(f"the pyslurm backend does not support --{key}; use slurm.backend: cli")
        options[_OPTION_NAMES[key]] = value
    return options
