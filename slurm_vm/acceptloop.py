"""The accept loop every slurm-vm listener shares: wait for connections until told to stop.

No imports from slurm_vm: every unit may use it (the launcher's control socket, `slurm-vm vnc`'s viewer port).
"""

from __future__ import annotations

import socket
import threading
from typing import Callable

POLL = 0.2      # how often a quiet listener looks at `stopping`


def accept_until(listener: socket.socket, stopping: threading.Event, handle: Callable[[socket.socket], None],
                 poll: float = POLL) -> None:
    """Hand each connection to `handle` (which owns it) until `stopping` is set or the listener is closed."""
    listener.settimeout(poll)
    while not stopping.is_set():
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            return
        conn.settimeout(None)
        handle(conn)
