"""A wall-clock limit for a whole hook: a stuck prolog or epilog must end within a bounded time.

Slurm's PrologEpilogTimeout defaults to infinite, so the hooks bound themselves.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator

from ..errors import NodeError

PROLOG_TIMEOUT_SECONDS = 90
EPILOG_TIMEOUT_SECONDS = 60


class HookTimeout(NodeError):
    pass


@contextlib.contextmanager
def time_limit(seconds: int, what: str) -> Iterator[None]:
    def on_alarm(signum, frame):
        raise HookTimeout(f"{what} took longer than {seconds}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
