"""The epilog: tear down everything of the job on this node, whatever state the prolog left."""

from __future__ import annotations

from ..errors import SlurmVmError
from .layout import ensure_state_dirs
from .log import hook_context, log_event
from .teardown import teardown_job
from .timelimit import EPILOG_TIMEOUT_SECONDS, time_limit


def run_epilog(env: dict[str, str], hook: str = "epilog") -> int:
    loaded = hook_context(hook, env, settings_only=True)
    if loaded is None:
        return 1
    ctx, config = loaded
    try:
        with time_limit(EPILOG_TIMEOUT_SECONDS, "the teardown"):
            state_dir = config.node_state_dir(ctx.node)
            ensure_state_dirs(state_dir)
            report = teardown_job(state_dir, ctx.job_id, ctx.uid)
    except (SlurmVmError, OSError) as exc:
        log_event(hook, ctx.job_id, f"teardown failed: {exc}", config.log_file, error=True)
        return 1
    if report.errors:
        log_event(hook, ctx.job_id, "could not undo: " + "; ".join(report.errors), config.log_file, error=True)
        return 1
    log_event(hook, ctx.job_id, "torn down", config.log_file)
    return 0
