"""The exceptions slurm-vm raises on purpose. Anything else is a bug."""

from __future__ import annotations

from dataclasses import dataclass


# The exit codes of the `slurm-vm` commands (docs/user-guide.md lists them).
EXIT_OK = 0
EXIT_ERROR = 1          # Slurm not reachable, a node command failed, anything else
EXIT_USAGE = 2          # bad options, a spec or config with problems
EXIT_NOT_FOUND = 3      # no VM of that name, no such job, or the job is not a slurm-vm job
EXIT_NOT_YOURS = 4      # the job belongs to another user
EXIT_NOT_RUNNING = 5    # the VM is pending or has ended, and the command needs it running
EXIT_AMBIGUOUS = 6      # a VM name matches more than one of your active jobs: give the job id
EXIT_NO_AGENT = 8       # `exec`: the VM has no guest agent (none installed, not started yet, or no channel)
EXIT_EXEC_TIMEOUT = 124  # `exec --timeout`: the command did not end in time (as timeout(1) says it)


class SlurmVmError(Exception):
    """Base of every error slurm-vm reports to a user or admin as one line.

    `details` (e.g. an ended VM's last console lines) are shown on stdout before that line."""

    exit_code = EXIT_ERROR

    def __init__(self, *args: object, details: tuple[str, ...] = ()):
        super().__init__(*args)
        self.details = details


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

    exit_code = EXIT_USAGE

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SlurmError(SlurmVmError):
    """Slurm could not be reached or refused a request."""


class NodeError(SlurmVmError):
    """Preparing or tearing down a node's objects failed."""


class NodeNotReady(NodeError):
    """This node lacks what the config promises a job (a network's bridge or parent interface).

    The prolog fails the job with the reason and does not drain the node: `slurm-vm node check` (the admins'
    HealthCheckProgram) is what drains nodes that are not ready.
    """


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


class CheckpointDirError(UserFault):
    """The user's checkpoint dir cannot be made or is not the user's (another user made it first): the job
    fails with what the admins must do; never a node fault."""


class ImageError(UserFault):
    """A user's disk image is refused (a backing or data file, a format mismatch, truncated, too large, over the
    quota) or names nothing in the user's repository: one line, the job fails, the node stays in service."""


class NotEnoughCores(HypervisorError):
    """The job step may use fewer cores than the VM has vCPUs."""


class NotEnoughMemory(HypervisorError):
    """The job's memory limit is below the VM's memory plus the VMM overhead."""


class NotFound(SlurmVmError):
    """No VM job matches what the user named (no such name or job id, or the job is not a slurm-vm job)."""

    exit_code = EXIT_NOT_FOUND


class NotYours(SlurmVmError):
    """The job id names another user's job."""

    exit_code = EXIT_NOT_YOURS


class NotRunning(SlurmVmError):
    """The VM is pending or has ended, and the command needs it running."""

    exit_code = EXIT_NOT_RUNNING


class Ambiguous(SlurmVmError):
    """A VM name matches more than one active job."""

    exit_code = EXIT_AMBIGUOUS


def is_users_fault(exc: BaseException) -> bool:
    """The one place that decides: the job's input (fail the job) or the node (drain it)."""
    return isinstance(exc, (UserFault, ValidationError))


class UsageError(SlurmVmError):
    """A command's options do not fit the VM (e.g. `exec --vm` beyond the job's VMs, too much `--stdin`)."""

    exit_code = EXIT_USAGE


class AgentUnavailable(SlurmVmError):
    """The VM has no guest agent channel, or no agent answers on it."""

    exit_code = EXIT_NO_AGENT


class AgentError(SlurmVmError):
    """The guest agent refused a command or answered nonsense."""


class AgentBusy(SlurmVmError):
    """Another session holds the guest agent for longer than slurm-vm waits."""


class ExecTimeout(SlurmVmError):
    """`slurm-vm exec`: the command did not end within its timeout."""

    exit_code = EXIT_EXEC_TIMEOUT
