"""QEMU: the command line (pure), control over QMP (the qemu.qmp library) and the launcher's runtime."""

from __future__ import annotations

import asyncio
import importlib
import os
import time

from ..errors import AgentUnavailable, HypervisorError
from ..limits import AGENT_CHARDEV, AGENT_LOCK, AGENT_SOCKET, QMP_SOCKET, SERIAL_LOG, SERIAL_SOCKET, VNC_SOCKET
from ..hypervisor.definition import VMDefinition, boot_argv
from ..hypervisor.runtime import Runtime, say
from ..hypervisor.shares import qemu_share_argv

QMP_TIMEOUT = 10.0
AGENT_LOCK_WAIT = 5.0          # the launcher's agent calls wait this long for a `slurm-vm exec` to end
AGENT_SYNC_TIMEOUT = 3.0


def qemu_argv(defn: VMDefinition, accelerator: str, nic_fds: list[int]) -> list[str]:
    """Starts paused (-S): the launcher pins each vCPU thread, then resumes."""
    accel = "kvm" if accelerator == "kvm" else "tcg,tb-size=64"
    argv = [defn.qemu_binary, "-name", f"{defn.name},debug-threads=on", "-accel", accel,
            "-machine", "q35" if defn.boot.firmware else "pc", "-cpu", "host" if accelerator == "kvm" else "qemu64",
            "-smp", str(defn.cpus), "-m", f"{defn.memory_bytes >> 20}M",
            "-nodefaults", "-no-user-config", "-S", "-display", "none", "-monitor", "none",
            *serial_argv(defn), *display_argv(defn),
            "-qmp", f"unix:{defn.path(QMP_SOCKET)},server=on,wait=off"]
    argv += boot_argv(defn.boot, ("-kernel", "-initrd", "-append", "-bios"))
    for i, disk in enumerate(defn.disks):
        readonly = ",readonly=on" if disk.readonly else ""
        argv += ["-drive", f"file={_escape(disk.path)},format={disk.format},if=none,id=d{i},"
                           f"file.locking=on,cache=none,aio=threads{readonly}",
                 "-device", f"virtio-blk-pci,drive=d{i}"]
    if len(nic_fds) != len(defn.nics):
        raise HypervisorError("one open file descriptor per NIC is needed")
    for i, (nic, fd) in enumerate(zip(defn.nics, nic_fds)):
        argv += ["-netdev", f"tap,id=n{i},fd={fd}", "-device", f"virtio-net-pci,netdev=n{i},mac={nic.mac}"]
    # The agent's port last: the devices before it keep the PCI slots they had before slurm-vm added it.
    return argv + qemu_share_argv(defn, defn.share_transport) + agent_argv(defn)


def serial_argv(defn: VMDefinition) -> list[str]:
    """The serial port on a unix socket (one interactive client at a time) and, whether or not a client is
    attached, everything the guest prints appended to the serial log."""
    return ["-chardev", f"socket,id=serial0,path={_escape(defn.path(SERIAL_SOCKET))},server=on,wait=off,"
                        f"logfile={_escape(defn.path(SERIAL_LOG))},logappend=on",
            "-serial", "chardev:serial0"]


def agent_argv(defn: VMDefinition) -> list[str]:
    """The guest agent's channel: a virtio-serial port named org.qemu.guest_agent.0 (the name
    qemu-guest-agent opens in the guest) whose host end is a unix socket in the job's run dir (0700, the
    user's). A guest without an agent simply never opens the port."""
    return ["-chardev", f"socket,id={AGENT_CHARDEV},path={_escape(defn.path(AGENT_SOCKET))},server=on,wait=off",
            "-device", "virtio-serial-pci,id=agentbus",
            "-device", f"virtserialport,bus=agentbus.0,chardev={AGENT_CHARDEV},name=org.qemu.guest_agent.0"]


def display_argv(defn: VMDefinition) -> list[str]:
    """A standard VGA adapter (firmware text, Linux's bochs DRM driver, Windows' basic display driver) whose
    VNC server listens only on a unix socket in the job's run dir, with VNC password authentication and no
    password set: nobody gets in until `slurm-vm vnc` sets a one-time password over QMP (slurm_vm/vncrelay.py)."""
    return ["-device", "VGA", "-vnc", f"unix:{_escape(defn.path(VNC_SOCKET))},password=on"]


def _escape(path: str) -> str:
    """QEMU's option syntax doubles commas inside values."""
    return path.replace(",", ",,")


async def _qmp(socket_path: str, commands: list[tuple[str, dict | None]], fd: int | None = None) -> list:
    from qemu.qmp import QMPClient
    client = QMPClient("slurm-vm")
    await asyncio.wait_for(client.connect(socket_path), QMP_TIMEOUT)
    try:
        if fd is not None:
            client.send_fd_scm(fd)      # taken by the first command, `getfd`
        results = []
        for name, args in commands:
            results.append(await asyncio.wait_for(client.execute(name, args), QMP_TIMEOUT))
        return results
    finally:
        await client.disconnect()


def qmp(socket_path: str, *commands: tuple[str, dict | None]) -> list:
    """Run QMP commands in one short connection (QEMU serves one QMP client at a time)."""
    return qmp_fd(socket_path, None, *commands)


def qmp_fd(socket_path: str, fd: int | None, *commands: tuple[str, dict | None]) -> list:
    """qmp(), with the file descriptor `fd` passed to QEMU first (SCM_RIGHTS); the first command is then
    `getfd`, which names it for the ones after it (`fd:NAME` migration URIs)."""
    try:
        return asyncio.run(_qmp(socket_path, list(commands), fd))
    except (OSError, asyncio.TimeoutError, EOFError) as exc:
        raise HypervisorError(f"QMP at {socket_path} did not answer: {exc or type(exc).__name__}") from None
    except Exception as exc:  # qemu.qmp raises its own error types (ExecuteError, ConnectError, ...)
        raise HypervisorError(f"QMP failed: {exc}") from None


async def _connect(socket_path: str, deadline: float, alive):
    """QEMU creates its QMP socket a moment before it listens on it: retry until it answers."""
    from qemu.qmp import QMPClient
    while True:
        client = QMPClient("slurm-vm")
        try:
            await asyncio.wait_for(client.connect(socket_path), QMP_TIMEOUT)
            return client
        except Exception:   # noqa: BLE001 - qemu.qmp's ConnectError and OS errors alike: QEMU not there yet
            if time.monotonic() > deadline or not alive():
                raise
            await asyncio.sleep(0.01)


async def _pin_and_resume(socket_path: str, cores: list[int], deadline: float, alive) -> dict[int, int]:
    client = await _connect(socket_path, deadline, alive)
    try:
        cpus = await asyncio.wait_for(client.execute("query-cpus-fast"), QMP_TIMEOUT)
        threads = {int(c["cpu-index"]): int(c["thread-id"]) for c in cpus}
        for index, tid in sorted(threads.items()):
            if index >= len(cores):
                raise HypervisorError(f"vCPU {index} has no core")
            os.sched_setaffinity(tid, {cores[index]})
        await asyncio.wait_for(client.execute("cont"), QMP_TIMEOUT)
        return {index: cores[index] for index in threads}
    finally:
        await client.disconnect()


def pin_and_resume(socket_path: str, cores: list[int], deadline: float, alive) -> dict[int, int]:
    """One QMP session: vCPU threads, each pinned to its core, then the guest resumed."""
    try:
        return asyncio.run(_pin_and_resume(socket_path, cores, deadline, alive))
    except HypervisorError:
        raise
    except (OSError, asyncio.TimeoutError, EOFError) as exc:
        raise HypervisorError(f"QMP at {socket_path} did not answer: {exc or type(exc).__name__}") from None
    except Exception as exc:  # qemu.qmp raises its own error types (ExecuteError, ConnectError, ...)
        raise HypervisorError(f"QMP failed: {exc}") from None


def agent_port_open(socket_path: str) -> bool | None:
    """QMP `query-chardev`'s `frontend-open` of the agent's chardev: whether the guest opened the agent port
    (a guest without an agent never does); None when QMP cannot say (busy, gone, no such chardev)."""
    try:
        (chardevs,) = qmp(socket_path, ("query-chardev", None))
    except HypervisorError:
        return None
    for chardev in chardevs:
        if chardev.get("label") == AGENT_CHARDEV and "frontend-open" in chardev:
            return bool(chardev["frontend-open"])
    return None


def power_button(socket_path: str) -> None:
    qmp(socket_path, ("system_powerdown", None))


def quit_now(socket_path: str) -> None:
    qmp(socket_path, ("quit", None))


class QemuRuntime(Runtime):
    hypervisor = "qemu"

    def argv(self, fds: list[int]) -> list[str]:
        return qemu_argv(self.defn, self.accelerator, fds)

    @property
    def qmp_path(self) -> str:
        return self.defn.path(QMP_SOCKET)

    def after_start(self, deadline: float) -> None:
        importlib.import_module("qemu.qmp")   # loaded while QEMU starts, not after it listens
        self.wait_for_socket(self.qmp_path, deadline)
        pinned = pin_and_resume(self.qmp_path, self.cores, deadline, lambda: self.proc.poll() is None)
        say("vCPUs pinned: " + ", ".join(f"vCPU {v} -> core {c}" for v, c in sorted(pinned.items())))

    def power_button(self) -> None:
        power_button(self.qmp_path)

    def hard_stop(self) -> None:
        try:
            quit_now(self.qmp_path)
        except HypervisorError:
            pass

    def agent(self, lock_wait: float = AGENT_LOCK_WAIT, sync_timeout: float = AGENT_SYNC_TIMEOUT):
        """A conversation with the guest agent (hypervisor/guest_agent.py), bounded for the launcher's use."""
        from ..hypervisor.guest_agent import session
        return session(self.defn.path(AGENT_SOCKET), self.defn.path(AGENT_LOCK), lock_wait, sync_timeout)

    def agent_shutdown(self) -> None:
        self._agent_present()
        with self.agent() as client:
            client.send_only("guest-shutdown", {"mode": "powerdown"})

    def _agent_present(self) -> None:
        """At once, without a sync's timeout: AgentUnavailable if the guest never opened the agent port."""
        from ..hypervisor.guest_agent import no_agent_reason
        if agent_port_open(self.qmp_path) is False:
            raise AgentUnavailable(no_agent_reason())

    def agent_freeze(self, timeout: float) -> int:
        """guest-fsfreeze-freeze: the guest's filesystems flushed and frozen; how many."""
        self._agent_present()
        with self.agent() as client:
            return int(client.execute("guest-fsfreeze-freeze", None, timeout))

    def agent_thaw(self, timeout: float = 30.0) -> int:
        with self.agent() as client:
            return int(client.execute("guest-fsfreeze-thaw", None, timeout))
