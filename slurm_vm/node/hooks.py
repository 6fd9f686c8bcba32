"""Entry points for slurm.conf's Prolog= and Epilog= (run as root by slurmd, once per job per node).

A job that is not a VM job costs one environment lookup: its comment lacks slurm-vm's prefix.
Exit status: 0 = done (or not a VM job, or the job's own input refused under `user_errors: fail-job`);
1 = node fault: Slurm drains the node (and requeues the job held, for a prolog).
"""

from __future__ import annotations

import os
import sys

COMMENT_PREFIX = "slurm-vm:"   # transport.COMMENT_PREFIX's family; checked here without importing it


def prolog_main() -> None:
    if not os.environ.get("SLURM_JOB_COMMENT", "").startswith(COMMENT_PREFIX):
        sys.exit(0)
    from .prolog import run_prolog
    sys.exit(run_prolog(dict(os.environ)))


def epilog_main() -> None:
    if not os.environ.get("SLURM_JOB_COMMENT", "").startswith(COMMENT_PREFIX):
        sys.exit(0)
    from .epilog import run_epilog
    sys.exit(run_epilog(dict(os.environ)))
