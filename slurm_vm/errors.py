"""The exceptions slurm-vm raises on purpose. Anything else is a bug."""

from __future__ import annotations

from dataclasses import dataclass


class SlurmVmError(Exception):
    """Base of every error slurm-vm reports to a user or admin as one line."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a document: where (dotted path, line) and what to do."""

    path: str
    message: str
    line: int | None = None
    source: str = ""

    def __str__(self) -> str:
        where = self.source or "input"
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {self.path or '(document)'}: {self.message}"


class ValidationError(SlurmVmError):
    """A spec or config is wrong; carries one Problem per mistake."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SlurmError(SlurmVmError):
    """Slurm could not be reached or refused a request."""


class NodeError(SlurmVmError):
    """Preparing or tearing down a node's objects failed."""


class HypervisorError(SlurmVmError):
    """The hypervisor could not be configured, started or controlled."""


class UserFault(SlurmVmError):
    """The job's own input is at fault (its spec, a volume its user cannot read, a disk too small).

    On a node this fails the job with the reason and never drains the node (is_users_fault decides).
    """


class TransportError(UserFault):
    """The VM spec carried by a job (comment or batch script) is damaged or missing."""


class DiskSizeError(UserFault):
    """The requested disk size cannot be honoured."""


class VolumeError(UserFault):
    """A persistent volume the spec names cannot be used by the job's user, or is attached elsewhere."""


class ShareError(UserFault):
    """A directory the spec mounts cannot be shared with the job user's rights."""


class NotEnoughCores(HypervisorError):
    """The job step may use fewer cores than the VM has vCPUs."""


class NotFound(SlurmVmError):
    """No VM job matches what the user named."""


def is_users_fault(exc: BaseException) -> bool:
    """The one place that decides: the job's input (fail the job) or the node (drain it)."""
    return isinstance(exc, (UserFault, ValidationError))
