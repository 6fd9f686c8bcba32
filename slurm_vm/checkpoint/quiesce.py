"""Consistent checkpoints: the guest's filesystems frozen through its agent just before the VM is paused and saved,
thawed once it runs again (after a manual checkpoint, or after a restore of a checkpoint saved frozen).

A guest without an agent is saved as before (crash-consistent, like a power cut), and its manifest says
`guest_frozen: false`. Whether the guest was frozen is slurm-vm's own record of its own request, not something
the guest reports: a guest's answers decide nothing but this flag.
"""

from __future__ import annotations

import threading
import time

from ..errors import SlurmVmError
from ..hypervisor.runtime import Runtime, say

FREEZE_TIMEOUT = 20.0          # seconds the agent may take to flush and freeze
THAW_ATTEMPTS_SECONDS = 120.0  # after a restore: the agent may need a moment to answer on the new channel


def freeze(runtime: Runtime) -> bool:
    """True when the guest's filesystems are frozen now; a guest without an agent (or one that fails) is saved
    as it is, with one line in the job's output."""
    try:
        count = runtime.agent_freeze(FREEZE_TIMEOUT)
    except SlurmVmError as exc:
        say(f"not freezing the guest's filesystems ({exc}); the saved disk is crash-consistent")
        thaw(runtime, quiet=True)     # a freeze that timed out may still complete in the guest
        return False
    say(f"froze the guest's filesystems through its agent ({count})")
    return True


def thaw(runtime: Runtime, quiet: bool = False) -> bool:
    try:
        count = runtime.agent_thaw()
    except SlurmVmError as exc:
        if not quiet:
            say(f"could not thaw the guest's filesystems: {exc}")
        return False
    if not quiet or count:
        say(f"thawed the guest's filesystems ({count})")
    return True


def thaw_after_restore(runtime: Runtime, seconds: float = THAW_ATTEMPTS_SECONDS) -> threading.Thread:
    """The restored guest continues frozen, as it was saved: thaw it in the background, retrying a while."""
    def attempt() -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                count = runtime.agent_thaw()
                say(f"thawed the restored guest's filesystems ({count})")
                return
            except SlurmVmError as exc:
                if time.monotonic() > deadline or runtime.proc is None or runtime.proc.poll() is not None:
                    say(f"could not thaw the restored guest's filesystems: {exc}; `slurm-vm exec NAME -- fsfreeze "
                        "-u /` (or a reboot) does")
                    return
                time.sleep(1.0)

    thread = threading.Thread(target=attempt, name="thaw-after-restore", daemon=True)
    thread.start()
    return thread
