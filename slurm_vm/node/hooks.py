"""Python side of slurm.conf's Prolog= and Epilog= (run as root by slurmd, once per job per node).

slurm.conf names bin/slurm-vm-prolog and bin/slurm-vm-epilog: a POSIX shell entry that starts Python
(`main`) only when there is VM work: the job's comment carries slurm-vm's prefix, this node holds state
of the job (a journal or job dir), or the shell cannot tell (no state-dir hint yet, a newer config).
Exit status: 0 = done (or nothing to do, or the job's own input refused under `user_errors: fail-job`);
1 = node fault: Slurm drains the node (and requeues the job held, for a prolog).
"""

from __future__ import annotations

import os
import sys

COMMENT_PREFIX = "slurm-vm:"   # transport.COMMENT_PREFIX's family; checked here without importing it
HOOKS = ("prolog", "epilog")


def is_vm_job(env: dict[str, str]) -> bool:
    return env.get("SLURM_JOB_COMMENT", "").startswith(COMMENT_PREFIX)


def run_hook(hook: str, env: dict[str, str]) -> int:
    if is_vm_job(env):
        if hook == "prolog":
            from .prolog import run_prolog
            return run_prolog(env)
        from .epilog import run_epilog
        return run_epilog(env)
    from .leftovers import clean_leftovers
    return clean_leftovers(hook, env)


def main(hook: str) -> None:
    if hook not in HOOKS:
        print(f"slurm-vm hook: unknown hook {hook!r}; use one of {', '.join(HOOKS)}", file=sys.stderr)
        sys.exit(1)
    sys.exit(run_hook(hook, dict(os.environ)))


def prolog_main() -> None:
    main("prolog")


def epilog_main() -> None:
    main("epilog")
