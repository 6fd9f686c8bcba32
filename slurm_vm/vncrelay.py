"""The node end of `slurm-vm vnc` (run by srun as the user, inside the job, on the VM's node).

QEMU's VNC server listens on vnc.sock in the job's run dir (the user's only) with `password=on` and no
password: every connection is refused until a session sets one. Two commands:

- `vnc-relay J --session`: one per `slurm-vm vnc` (the job's vnc.lock; a second session is refused in one
  line). Sets a fresh random VNC password over QMP, prints it as one JSON line on stdout (it travels back to
  the login side through srun's stdio, never through a command line), and holds the session until its stdin
  ends (the login side stopped or went away) or the VM ends. The password is a lease: it expires LEASE
  seconds ahead and is renewed while the session lives, so a relay killed outright leaves no valid
  password for long. When the session ends the password is replaced by an unknown one and expired at once.
- `vnc-relay J`: one per viewer connection: copies stdin/stdout to and from vnc.sock.
"""

from __future__ import annotations

import enum
import json
import os
import secrets
import selectors
import signal
import socket
import string
import sys

from .console import ConsoleBusy, take_lock
from .errors import HypervisorError
from .limits import CH_API_SOCKET, QMP_SOCKET, VNC_LOCK, VNC_SOCKET
from .sshjump import pipe_socket

LEASE = 90                     # seconds a session's password stays valid without a renewal
RENEW_EVERY = 30
PASSWORD_LENGTH = 8            # VNC authentication uses 8 characters at most (DES key)
ALPHABET = string.ascii_letters + string.digits


class VncExit(enum.IntEnum):
    ENDED = 0                  # the session ended (the user stopped it)
    VM_ENDED = 10
    BUSY = 11                  # another `slurm-vm vnc` session of this VM runs
    NO_DISPLAY = 12            # no VNC server: cloud-hypervisor, or the VM is not (yet) running


def new_password() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(PASSWORD_LENGTH))


def password_commands(password: str, lease: int = LEASE) -> list[tuple[str, dict]]:
    """QMP commands that set `password` for VNC, valid for `lease` seconds (QEMU 7.2 and 10 alike)."""
    return [("set_password", {"protocol": "vnc", "password": password}),
            ("expire_password", {"protocol": "vnc", "time": f"+{lease}"})]


def lockout_commands() -> list[tuple[str, dict]]:
    """A password nobody knows, expired at once: new connections are refused until the next session."""
    return [("set_password", {"protocol": "vnc", "password": new_password()}),
            ("expire_password", {"protocol": "vnc", "time": "now"})]


def no_display_reason(job_dir: str) -> str | None:
    if os.path.exists(os.path.join(job_dir, VNC_SOCKET)):
        return None
    if os.path.exists(os.path.join(job_dir, CH_API_SOCKET)):
        return "the VM runs on cloud-hypervisor, which has no display: use `slurm-vm console` or `slurm-vm ssh`"
    return "the VM has no display on this node (is it still starting?)"


def _qmp(job_dir: str, commands: list[tuple[str, dict]]) -> None:
    from .hypervisor.qemu import qmp
    qmp(os.path.join(job_dir, QMP_SOCKET), *commands)


def session(job_dir: str, stdin: int = 0, stdout: int = 1) -> int:
    reason = no_display_reason(job_dir)
    if reason:
        _say(reason)
        return VncExit.NO_DISPLAY
    try:
        lock = take_lock(os.path.join(job_dir, VNC_LOCK), "the VM's display is in use by another "
                                                          "`slurm-vm vnc` session; end that one first")
    except ConsoleBusy as exc:
        _say(str(exc))
        return VncExit.BUSY
    old = {sig: signal.signal(sig, _raise_exit) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        return _hold(job_dir, stdin, stdout)
    finally:
        try:
            _qmp(job_dir, lockout_commands())
        except HypervisorError:
            pass             # the VM is gone: so is its VNC server
        for sig, handler in old.items():
            signal.signal(sig, handler)
        os.close(lock)


def _hold(job_dir: str, stdin: int, stdout: int) -> int:
    password = new_password()
    try:
        _qmp(job_dir, password_commands(password))
    except HypervisorError as exc:
        _say(f"cannot set the session's VNC password: {exc}")
        return VncExit.NO_DISPLAY
    os.write(stdout, (json.dumps({"password": password, "lease": LEASE}) + "\n").encode())
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_READ)
    while True:
        if sel.select(timeout=RENEW_EVERY):
            if not os.read(stdin, 4096):
                return VncExit.ENDED
            continue
        try:
            _qmp(job_dir, password_commands(password)[1:])
        except HypervisorError:
            return VncExit.VM_ENDED


def _raise_exit(signum, frame):
    raise SystemExit(VncExit.ENDED)


def connect(job_dir: str, stdin: int = 0, stdout: int = 1) -> int:
    """One viewer connection: stdin/stdout <-> the VM's VNC socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(os.path.join(job_dir, VNC_SOCKET))
    except OSError:
        sock.close()
        _say(no_display_reason(job_dir) or "the VM's VNC server does not answer")
        return VncExit.NO_DISPLAY
    pipe_socket(sock, stdin, stdout)
    return VncExit.ENDED


def _say(message: str) -> None:
    print(f"slurm-vm vnc: {message}", file=sys.stderr, flush=True)
