"""Shell completion of VM names and job ids (click's completion: `_SLURM_VM_COMPLETE=bash_source slurm-vm`).

Completion must never print an error into the user's shell: anything that goes wrong gives no candidates.
"""

from __future__ import annotations

import os

from .errors import SlurmVmError


def vm_candidates(jobs, incomplete: str) -> list[tuple[str, str]]:
    """(value, help) for the user's active VM jobs: names and job ids starting with `incomplete`."""
    from .lifecycle import ACTIVE_STATES
    out: list[tuple[str, str]] = []
    for job in sorted((j for j in jobs if j.is_vm and j.state in ACTIVE_STATES), key=lambda j: j.job_id):
        where = f"{job.state.lower()} on {','.join(job.nodes)}" if job.nodes else job.state.lower()
        for value, help_text in ((job.vm_name, f"job {job.job_id}, {where}"), (str(job.job_id), f"VM {job.vm_name}")):
            if value.startswith(incomplete) and value not in (v for v, _ in out):
                out.append((value, help_text))
    return out


def complete_vm(ctx, param, incomplete: str):
    from click.shell_completion import CompletionItem
    from .config import load_config
    from .lifecycle import current_user
    from .slurm import get_backend
    try:
        config = load_config(ctx.params.get("config_path") or os.environ.get("SLURM_VM_CONFIG"))
        backend = get_backend(config.slurm.backend, min(config.slurm.command_timeout, 5), config.slurm.bin_dir)
        jobs = backend.jobs(user=current_user())
    except (SlurmVmError, OSError):
        return []
    return [CompletionItem(value, help=help_text) for value, help_text in vm_candidates(jobs, incomplete)]
