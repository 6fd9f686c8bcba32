"""One line per node event: to stderr (slurmd logs it), syslog, and the admin's log file if configured."""

from __future__ import annotations

import os
import sys
import syslog
import time


def hook_context(hook: str, env: dict[str, str], settings_only: bool = False):
    """(JobContext, Config) for a hook, or None after logging why not (a node fault).
    settings_only: a configcache.HookSettings (state_dir, log_file) instead of the whole Config."""
    from ..errors import SlurmVmError, ValidationError
    from .configcache import load_config_cached, load_hook_settings
    from .context import job_context_from_env
    job = env.get("SLURM_JOB_ID", "?")
    try:
        return job_context_from_env(env), load_hook_settings() if settings_only else load_config_cached()
    except ValidationError as exc:
        log_event(hook, job, f"step config: {exc.problems[0]}", error=True)
    except SlurmVmError as exc:
        log_event(hook, job, f"step context: {exc}", error=True)
    return None


def one_line(text: str) -> str:
    """`text` as one printable line whatever a user put in it: control characters and lone surrogates escaped."""
    escaped = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in escaped)


def log_event(hook: str, job_id: int | str, message: str, log_file: str | None = None, error: bool = False) -> None:
    line = one_line(f"slurm-vm-{hook}: job {job_id}: {message}")
    print(line, file=sys.stderr, flush=True)
    syslog.openlog("slurm-vm", syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_ERR if error else syslog.LOG_INFO, line)
    if log_file:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                fh.write(f"{stamp} {line}\n")
        except OSError as exc:
            print(f"slurm-vm-{hook}: cannot write log file {log_file}: {exc.strerror}", file=sys.stderr)
