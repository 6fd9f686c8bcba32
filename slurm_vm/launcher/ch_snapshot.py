"""Saving a cloud-hypervisor guest over its REST API (the Snapshotter of vmm.py).

pause: PUT /vm.pause. save: PUT /vm.snapshot {"destination_url": "file://DIR"} (cloud-hypervisor writes
config.json, state.json and memory-ranges into DIR), then PUT /vmm.shutdown and wait for the process to exit.

Why the VMM ends inside save(), before the overlay is copied: cloud-hypervisor's qcow2 driver keeps L2 and
refcount tables in a write-back cache that reaches the file only on a guest flush or when the disk is closed
(and it sets the image's dirty bit while open). vm.pause drains in-flight requests but does not flush that
cache, and the API has no flush call: a copy of the overlay taken while the VMM lives may miss clusters the
guest already wrote. Closing the VMM writes the caches and clears the dirty bit, so the overlay copied after
save() matches the saved RAM. Hence `keeps_running = False`: after a successful save the guest cannot be
resumed in the same process (a manual checkpoint that continues must restore from the checkpoint just made).
"""

from __future__ import annotations

import os
import time

from ..errors import HypervisorError
from ..checkpoint.manifest import MANIFEST_NAME, OVERLAY_NAME, FileEntry
from ..checkpoint.files import seal

CONFIG_NAME = "config.json"
STATE_JSON = "state.json"
REQUIRED = (CONFIG_NAME, STATE_JSON)
POLL = 0.1


class CloudHypervisorSnapshotter:
    vmm = "cloud-hypervisor"
    disks_settled_when_paused = False   # its qcow2 cache is written back only when it exits
    can_compress = False       # memory-ranges is written by cloud-hypervisor itself, uncompressed
    keeps_running = False      # save() ends the VMM (see the module docstring)

    def __init__(self, api_factory, alive):
        self.api_factory, self.alive = api_factory, alive

    @classmethod
    def of(cls, runtime, alive) -> "CloudHypervisorSnapshotter":
        return cls(runtime.api, alive)

    def _call(self, method: str, *args):
        api = self.api_factory()
        try:
            return getattr(api, method)(*args)
        finally:
            api.close()

    def version(self) -> str:
        """The build version (`cloud-hypervisor --version` prints the same string), e.g. v53.0."""
        info = self._call("ping")
        version = info.get("build_version") or info.get("version")
        if not isinstance(version, str) or not version:
            raise HypervisorError("cloud-hypervisor's vmm.ping gave no version")
        return version

    def pause(self) -> None:
        self._call("pause")

    def save(self, directory: str, compress: str, deadline: float) -> list[FileEntry]:
        self._call("snapshot", directory, deadline - time.monotonic())
        self._call("shutdown_vmm")
        while self.alive():
            if time.monotonic() > deadline:
                raise HypervisorError("cloud-hypervisor did not exit after vmm.shutdown: its disks may be unflushed")
            time.sleep(POLL)
        return [seal(os.path.join(directory, name)) for name in snapshot_files(os.listdir(directory))]

    def resume(self) -> None:
        self._call("resume")


def snapshot_files(names: list[str]) -> list[str]:
    """The files cloud-hypervisor wrote into the checkpoint dir (everything but ours), config.json first."""
    ours = {MANIFEST_NAME, OVERLAY_NAME, f".{MANIFEST_NAME}.tmp"}
    files = sorted(n for n in names if n not in ours)
    missing = [n for n in REQUIRED if n not in files]
    if missing:
        raise HypervisorError(f"cloud-hypervisor's snapshot has no {missing[0]}")
    return [CONFIG_NAME] + [n for n in files if n != CONFIG_NAME]
