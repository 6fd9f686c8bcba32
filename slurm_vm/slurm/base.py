"""The interface slurm-vm needs from Slurm, and the job record it works with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..limits import JOB_NAME_PREFIX


@dataclass(frozen=True)
class JobInfo:
    job_id: int
    name: str
    user: str
    state: str
    nodes: tuple[str, ...] = ()
    cpus: int = 0
    memory: str = ""
    time_used: str = ""
    time_limit: str = ""
    start_time: str = ""
    reason: str = ""
    comment: str = ""
    extra: dict = field(default_factory=dict)
    spec_text: str | None = None    # the spec, once read from the batch script (lifecycle.with_spec)

    @property
    def is_vm(self) -> bool:
        from ..transport import is_vm_comment
        return is_vm_comment(self.comment)

    @property
    def vm_name(self) -> str:
        return self.name[len(JOB_NAME_PREFIX):] if self.name.startswith(JOB_NAME_PREFIX) else self.name


class SlurmBackend(Protocol):
    def submit(self, script: str, args: tuple[str, ...]) -> int: ...

    def jobs(self, user: str | None = None, job_ids: tuple[int, ...] = (), node: str | None = None) -> list[JobInfo]: ...

    def signal(self, job_id: int, signal: str, batch_only: bool = False) -> None: ...

    def cancel(self, job_id: int) -> None: ...

    def batch_script(self, job_id: int) -> str: ...

    def output_path(self, job_id: int) -> str | None: ...
