"""A hook for a job whose comment does not (or no longer) name a VM: tear down what this node still holds.

The shell entry (bin/slurm-vm-prolog) starts Python for such a job only when it sees the job's journal,
job dir or refusal note, or cannot tell (no state-dir hint yet, or the config is newer than the hint).
That covers a VM job whose user changed the comment, and a hook that crashed. A broken config does not
fail jobs that are not VM jobs: it is logged, and the job goes on.
"""

from __future__ import annotations

import os

from ..errors import SlurmVmError, ValidationError
from .layout import error_note_path, job_dir, journal_path
from .log import log_event


def job_state_paths(state_dir: str, job_id: int) -> tuple[str, ...]:
    """What the shell entry checks too (keep the two in step)."""
    return journal_path(state_dir, job_id), job_dir(state_dir, job_id), error_note_path(state_dir, job_id)


def holds_job_state(state_dir: str, job_id: int) -> bool:
    return any(os.path.lexists(path) for path in job_state_paths(state_dir, job_id))


def clean_leftovers(hook: str, env: dict[str, str]) -> int:
    from .configcache import load_hook_settings
    from .context import job_id_from_env
    try:
        job_id = job_id_from_env(env)
        config = load_hook_settings()
    except ValidationError as exc:
        log_event(hook, env.get("SLURM_JOB_ID", "?"), f"config: {exc.problems[0]} (not a VM job: it goes on)",
                  error=True)
        return 0
    except SlurmVmError as exc:
        log_event(hook, env.get("SLURM_JOB_ID", "?"), f"{exc} (not a VM job: it goes on)", error=True)
        return 0
    if not holds_job_state(config.node_state_dir(env.get("SLURMD_NODENAME", "")), job_id):
        return 0
    log_event(hook, job_id, "not a VM job (any more), but this node holds its state: tearing it down",
              config.log_file)
    from .epilog import run_epilog
    return run_epilog(env, hook)
