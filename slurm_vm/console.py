"""`slurm-vm console`: the user's terminal on the VM's serial port, through the job on its node.

Client side (login node): checks the VM is the user's and running, then runs
`srun --jobid=J --overlap --pty --nodelist=NODE slurm-vm console-relay J` with the local terminal in raw
mode, and restores the terminal on every way out (detach, VM end, srun failure, signals).

Node side (`console-relay`, run by srun as the user inside the job): takes the job's console lock (one
interactive session per VM; others are refused in one line and may watch `console --log -f`), connects
to the job's serial.sock, puts the step's pty in raw mode and copies bytes both ways until Ctrl-]
(detach: the VM keeps running) or the VM's end. Everything the guest prints, including the session,
is still appended to serial.log by the VMM (QEMU) or the launcher (cloud-hypervisor).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import socket
import subprocess
import sys
import termios
import tty
from typing import Iterator

from .errors import SlurmError, SlurmVmError
from .limits import CONSOLE_LOCK as LOCK_NAME
from .limits import SERIAL_SOCKET as SOCKET_NAME

DETACH_KEY = b"\x1d"          # Ctrl-]
DETACH_NAME = "Ctrl-]"


class RelayExit:
    DETACHED = 0
    VM_ENDED = 10
    BUSY = 11
    NO_CONSOLE = 12


# --- client side ------------------------------------------------------------------------------------

def relay_argv(job_id: int, node: str, slurm_vm_command: str) -> list[str]:
    return ["srun", f"--jobid={job_id}", "--overlap", "--pty", "--nodes=1", "--ntasks=1", f"--nodelist={node}",
            "--quiet", slurm_vm_command, "console-relay", str(job_id)]


@contextlib.contextmanager
def terminal_restored(fd: int = 0) -> Iterator[None]:
    """The terminal's settings as they were on entry, whatever happens (SIGTERM/SIGHUP included)."""
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None

    def _raise(signum, frame):
        raise SystemExit(128 + signum)

    old_handlers = {sig: signal.signal(sig, _raise) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def attach(job_id: int, vm_name: str, node: str, slurm_vm_command: str) -> int:
    """Run the relay through srun; returns a message-worthy exit code (see RelayExit)."""
    argv = relay_argv(job_id, node, slurm_vm_command)
    _say(f"connected to VM {vm_name} (job {job_id}) on {node}; detach with {DETACH_NAME}")
    with terminal_restored():
        try:
            if os.isatty(0):
                tty.setraw(0)
            code = subprocess.call(argv)
        except FileNotFoundError:
            raise SlurmError("srun not found: install the Slurm client commands") from None
    if code == RelayExit.DETACHED:
        _say(f"detached from VM {vm_name}; it keeps running")
    elif code == RelayExit.VM_ENDED:
        _say(f"the console of VM {vm_name} closed: the VM stopped")
    return code


def _say(message: str) -> None:
    print(f"slurm-vm: {message}", file=sys.stderr, flush=True)


# --- node side --------------------------------------------------------------------------------------

class ConsoleBusy(SlurmVmError):
    pass


def relay(job_dir: str, stdin: int = 0, stdout: int = 1) -> int:
    try:
        lock = take_lock(os.path.join(job_dir, LOCK_NAME))
    except ConsoleBusy as exc:
        _say(str(exc))
        return RelayExit.BUSY
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(os.path.join(job_dir, SOCKET_NAME))
        except OSError as exc:
            _say(f"the VM has no serial console on this node ({exc.strerror}); is it still starting?")
            return RelayExit.NO_CONSOLE
        saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
        try:
            if saved is not None:
                tty.setraw(stdin)
            return copy_both_ways(sock, stdin, stdout)
        finally:
            if saved is not None:
                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
            sock.close()
    finally:
        os.close(lock)


def take_lock(path: str, busy: str = "the console is in use by another session; watch it read-only with "
                                     "`slurm-vm console --log -f`") -> int:
    """One session at a time (console.lock, vnc.lock): the lock's fd, or ConsoleBusy(busy)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConsoleBusy(busy) from None
    return fd


def copy_both_ways(sock: socket.socket, stdin: int, stdout: int) -> int:
    """Until the detach key on stdin (DETACHED), or the serial socket closing (VM_ENDED)."""
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_READ, "in")
    sel.register(sock, selectors.EVENT_READ, "vm")
    while True:
        for key, _ in sel.select():
            if key.data == "in":
                data = os.read(stdin, 4096)
                if not data:
                    return RelayExit.DETACHED
                cut = data.find(DETACH_KEY)
                if cut >= 0:
                    if cut:
                        sock.sendall(data[:cut])
                    return RelayExit.DETACHED
                sock.sendall(data)
            else:
                data = sock.recv(65536)
                if not data:
                    return RelayExit.VM_ENDED
                _write_all(stdout, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
