"""The epilog: tear down everything of the job on this node, whatever state the prolog left."""

from __future__ import annotations

import signal

from ..config import load_config
from ..errors import SlurmVmError, ValidationError
from .context import job_context_from_env
from .log import log_event
from .prepare import ensure_state_dirs
from .teardown import teardown_job

EPILOG_TIMEOUT_SECONDS = 60


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Timeout()


def run_epilog(env: dict[str, str]) -> int:
    job = env.get("SLURM_JOB_ID", "?")
    try:
        ctx = job_context_from_env(env)
        config = load_config()
    except ValidationError as exc:
        log_event("epilog", job, f"config: {exc.problems[0]}", error=True)
        return 1
    except SlurmVmError as exc:
        log_event("epilog", job, str(exc), error=True)
        return 1
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(EPILOG_TIMEOUT_SECONDS)
    try:
        state_dir = config.node_state_dir(ctx.node)
        ensure_state_dirs(state_dir)
        report = teardown_job(state_dir, ctx.job_id, ctx.uid)
    except _Timeout:
        log_event("epilog", ctx.job_id, f"teardown took longer than {EPILOG_TIMEOUT_SECONDS}s", config.log_file,
                  error=True)
        return 1
    except (SlurmVmError, OSError) as exc:
        log_event("epilog", ctx.job_id, f"teardown failed: {exc}", config.log_file, error=True)
        return 1
    finally:
        signal.alarm(0)
    if report.errors:
        log_event("epilog", ctx.job_id, "could not undo: " + "; ".join(report.errors), config.log_file, error=True)
        return 1
    log_event("epilog", ctx.job_id, "torn down", config.log_file)
    return 0
