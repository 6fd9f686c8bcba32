"""The epilog: tear down everything of the job on this node, whatever state the prolog left."""

from __future__ import annotations

import signal

from ..errors import SlurmVmError
from .log import hook_context, log_event
from .layout import ensure_state_dirs
from .teardown import teardown_job

EPILOG_TIMEOUT_SECONDS = 60


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Timeout()


def run_epilog(env: dict[str, str]) -> int:
    loaded = hook_context("epilog", env)
    if loaded is None:
        return 1
    ctx, config = loaded
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
