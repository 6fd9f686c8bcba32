"""What every VMM runtime shares: the NIC file descriptors it is handed and its process.

The QEMU and cloud-hypervisor runtimes (qemu.py, cloud_hypervisor.py) subclass Runtime.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import time

from ..errors import AgentUnavailable, HypervisorError
from .definition import VMDefinition

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
START_TIMEOUT = 30.0


def say(message: str) -> None:
    print(f"slurm-vm launch: {message}", file=sys.stderr, flush=True)


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    except OSError as exc:
        os.close(fd)
        raise HypervisorError(f"cannot attach to tap {name}: {exc.strerror}") from None
    return fd


def open_nics(defn: VMDefinition) -> list[int]:
    fds: list[int] = []
    try:
        for nic in defn.nics:
            if nic.tap:
                fds.append(open_tap(nic.tap))
            else:
                fds.append(os.open(nic.device, os.O_RDWR | os.O_CLOEXEC))  # type: ignore[arg-type]
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise HypervisorError(f"cannot open a NIC device: {exc.strerror}: {exc.filename}") from None
    except HypervisorError:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def on_cores(cores: list[int]):
    """A preexec_fn that puts the child (and every thread it makes) on `cores`, or None for no change."""
    if not cores:
        return None
    wanted = set(cores)
    return lambda: os.sched_setaffinity(0, wanted)


class Runtime:
    """One VMM process and how to talk to it."""
    hypervisor = ""        # its name in hypervisor/registry.py

    def __init__(self, defn: VMDefinition, accelerator: str, cores: list[int]):
        self.defn, self.accelerator, self.cores = defn, accelerator, cores
        self.proc: subprocess.Popen | None = None
        self.io_cores: list[int] = []   # the VMM process's cores (its vCPU threads are then pinned); [] inherit

    def argv(self, fds: list[int]) -> list[str]:
        raise NotImplementedError

    def after_start(self, deadline: float) -> None:
        raise NotImplementedError

    def power_button(self) -> None:
        raise NotImplementedError

    def hard_stop(self) -> None:
        raise NotImplementedError

    def agent_shutdown(self) -> None:
        """Ask the guest agent to power the guest off (a guest that ignores the ACPI power button)."""
        raise AgentUnavailable("the VM has no guest agent channel")

    def agent_freeze(self, timeout: float) -> int:
        """Freeze the guest's filesystems through its agent (before a checkpoint); how many it froze."""
        raise AgentUnavailable("the VM has no guest agent channel")

    def agent_thaw(self, timeout: float = 30.0) -> int:
        raise AgentUnavailable("the VM has no guest agent channel")

    def start(self, fds: list[int], log_path: str) -> None:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            self.proc = subprocess.Popen(self.argv(fds), pass_fds=fds, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True, close_fds=True,
                                         umask=0o077,  # its sockets (serial, QMP/API) are the user's only
                                         preexec_fn=on_cores(self.io_cores))
        except OSError as exc:
            raise HypervisorError(f"cannot run {self.argv(fds)[0]}: {exc.strerror}") from None
        finally:
            os.close(log)

    def wait_for_socket(self, path: str, deadline: float) -> None:
        while not os.path.exists(path):
            if self.proc.poll() is not None:  # type: ignore[union-attr]
                raise HypervisorError(f"the hypervisor exited during start-up (status {self.proc.returncode})")
            if time.monotonic() > deadline:
                raise HypervisorError(f"the hypervisor did not open {os.path.basename(path)} within "
                                      f"{START_TIMEOUT:.0f}s")
            time.sleep(0.02)
