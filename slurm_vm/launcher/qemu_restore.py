"""A QEMU runtime that continues a checkpointed guest instead of booting it (`-incoming defer`)."""

from __future__ import annotations

import os
import time

from ..errors import HypervisorError
from .qemu import QemuRuntime, qmp
from ..hypervisor.runtime import say
from ..checkpoint.manifest import CheckpointRefused, version_mismatch
from .qemu_save import load_state, qemu_version
from ..checkpoint.store import Found

LOAD_TIMEOUT = 600.0


def wait_for_vcpu_threads(socket_path: str, deadline: float, alive) -> dict[int, int]:
    """cpu-index -> host thread id; QEMU creates its QMP socket a moment before it listens on it."""
    while True:
        try:
            (cpus,) = qmp(socket_path, ("query-cpus-fast", None))
            return {int(c["cpu-index"]): int(c["thread-id"]) for c in cpus}
        except HypervisorError:
            if time.monotonic() > deadline or not alive():
                raise
            time.sleep(0.05)


class RestoringQemuRuntime(QemuRuntime):
    def __init__(self, defn, accelerator: str, cores: list[int], found: Found):
        super().__init__(defn, accelerator, cores)
        self.found = found
        self.before_resume = lambda: None     # a multi-VM job: wait until every VM has loaded (group.py)

    def argv(self, fds: list[int]) -> list[str]:
        return super().argv(fds) + ["-incoming", "defer"]

    def after_start(self, deadline: float) -> None:
        """Raises CheckpointRefused when this QEMU cannot take the saved state (the caller may boot afresh)."""
        self.wait_for_socket(self.qmp_path, deadline)
        alive = lambda: self.proc.poll() is None  # noqa: E731
        threads = wait_for_vcpu_threads(self.qmp_path, deadline, alive)
        problem = version_mismatch(self.found.manifest, "qemu", qemu_version(self.qmp_path))
        if problem:
            raise CheckpointRefused(problem)
        for index, tid in sorted(threads.items()):
            os.sched_setaffinity(tid, {self.cores[index]})
        started = time.monotonic()
        manifest = self.found.manifest
        if len(manifest.states) != 1:
            raise CheckpointRefused(f"a QEMU checkpoint has one state file, this one {len(manifest.states)}")
        load_state(self.qmp_path, os.path.join(self.found.path, manifest.states[0].name),
                   started + LOAD_TIMEOUT, alive)
        self.before_resume()
        qmp(self.qmp_path, ("cont", None))
        say(f"restored from {self.found.path} in {time.monotonic() - started:.2f}s (saved by job "
            f"{manifest.job_id} run {manifest.restart_count}, {manifest.reason}); vCPUs pinned: "
            + ", ".join(f"vCPU {v} -> core {self.cores[v]}" for v in sorted(threads)))
