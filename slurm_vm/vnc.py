"""`slurm-vm vnc [--web] NAME|JOBID`: the VM's display for a VNC viewer or a browser, through the VM's node.

The login side (this module) runs one session relay on the node (`srun --overlap … vnc-relay J --session`,
slurm_vm/vncrelay.py), which sets a one-time VNC password over QMP and sends it back through srun's stdio.
It then listens on 127.0.0.1 only: each accepted connection gets its own `srun … vnc-relay J` whose stdin
and stdout are that connection, up to QEMU's unix socket in the job's run dir. Login nodes are shared, so a
local port is not private: a connection from another uid than the user's (or root's) is closed at once
(the kernel's socket table names the peer's owner), and QEMU asks every viewer for the session's password.
The session ends with the command (Ctrl-C, SIGTERM, SIGHUP) or with the VM: the node relay then replaces
the password by an unknown, expired one, and every relay of the session is ended.
"""

from __future__ import annotations

import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from .acceptloop import accept_until
from .errors import SlurmError, SlurmVmError
from .loopback import allowed
from .vncrelay import VncExit
from .slurm.srun import srun_in_job

STOP_WAIT = 10.0


class VncRefused(SlurmVmError):
    """The node relay refused the session (busy, no display); exit_code is the relay's."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.exit_code = code


@dataclass(frozen=True)
class Target:
    job_id: int
    vm_name: str
    node: str
    slurm_vm_command: str


def relay_argv(target: Target, session: bool) -> list[str]:
    return srun_in_job(target.job_id, target.node, [target.slurm_vm_command, "vnc-relay", str(target.job_id),
                                                    *(["--session"] if session else [])], unbuffered=True)


def _spawn(argv: list[str], **kw) -> subprocess.Popen:
    """In its own process group: the terminal's Ctrl-C reaches this command only, which ends the relays."""
    try:
        return subprocess.Popen(argv, start_new_session=True, **kw)
    except FileNotFoundError:
        raise SlurmError("srun not found: install the Slurm client commands") from None


@dataclass
class Session:
    target: Target
    timeout: float
    proc: subprocess.Popen | None = None
    password: str = ""
    streams: list[subprocess.Popen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self) -> None:
        """Start the node's session relay and read the session's password (VncRefused if refused)."""
        self.proc = _spawn(relay_argv(self.target, True), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
        line = _read_line(self.proc.stdout, self.timeout)  # type: ignore[arg-type]
        try:
            self.password = str(json.loads(line)["password"])
        except (ValueError, KeyError, TypeError):
            self._refused()

    def _refused(self) -> None:
        assert self.proc is not None
        _stop(self.proc)
        err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
        code = self.proc.returncode
        raise VncRefused(refusal(err, code), code if code in {c.value for c in VncExit} and code else 1)

    def stream(self, conn: socket.socket) -> subprocess.Popen:
        """A relay to the VM's VNC server whose stdin and stdout are `conn` (closed here, the relay keeps it)."""
        with self.lock:
            proc = _spawn(relay_argv(self.target, False), stdin=conn.fileno(), stdout=conn.fileno(),
                          stderr=subprocess.DEVNULL)
            self.streams = [p for p in self.streams if p.poll() is None] + [proc]
        conn.close()
        return proc

    def wait(self) -> int:
        """Until the VM ends the session (VM_ENDED) or the user does (Ctrl-C, SIGTERM, SIGHUP: ENDED)."""
        assert self.proc is not None
        old = {sig: signal.signal(sig, _raise_exit) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            self.proc.wait()
            return VncExit.VM_ENDED
        except KeyboardInterrupt:
            return VncExit.ENDED
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def close(self) -> None:
        """End every relay of the session; the session relay locks the display out as it ends."""
        with self.lock:
            for proc in self.streams:
                _stop(proc)
            self.streams = []
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(timeout=STOP_WAIT)
            except (OSError, subprocess.TimeoutExpired):
                _stop(self.proc)


def refusal(stderr: str, code: int) -> str:
    """The node relay's own one-line reason (srun adds lines of its own, e.g. the task's exit code)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    own = [ln.removeprefix("slurm-vm vnc: ") for ln in lines if ln.startswith("slurm-vm vnc: ")]
    if own or lines:
        return (own or lines)[-1]
    return f"the VM's node relay ended without a session (exit {code})"


def _raise_exit(signum, frame):
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (srun passes it on to its task), then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _read_line(stream, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    if not sel.select(timeout):
        return ""
    return stream.readline().decode(errors="replace")


# --- the plain VNC port ----------------------------------------------------------------------------

class ViewerServer:
    """127.0.0.1:port for VNC viewers; each allowed connection gets its own relay."""

    def __init__(self, session: Session, port: int):
        self.session = session
        self.listener = listen(port)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="vnc-viewers", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=STOP_WAIT)
        self.listener.close()

    def _serve(self) -> None:
        accept_until(self.listener, self.stopping, self._viewer, poll=0.5)

    def _viewer(self, conn: socket.socket) -> None:
        if not allowed(conn):
            say("refused a connection from another user")
            conn.close()
            return
        self.session.stream(conn)

    def instructions(self, host: str, user: str) -> list[str]:
        target, port = self.session.target, self.port
        return [f"the display of VM {target.vm_name} (job {target.job_id}) is on 127.0.0.1:{port} until you "
                f"press Ctrl-C",
                f"VNC password for this session only: {self.session.password}",
                f"on this machine: vncviewer 127.0.0.1::{port}",
                f"from your laptop: ssh -N -L {port}:127.0.0.1:{port} {user}@{host}   "
                f"then: vncviewer localhost::{port}"]


def listen(port: int) -> socket.socket:
    try:
        return socket.create_server(("127.0.0.1", port))
    except OSError as exc:
        raise SlurmVmError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}): choose another --port") from None


def run_session(target: Target, timeout: float, port: int, web: bool, novnc_dir: str) -> int:
    """The whole session: listen, open the node's session, serve until the user or the VM ends it."""
    session = Session(target, timeout)
    if web:
        from .vncweb import WebBridge
        server: ViewerServer | WebBridge = WebBridge(session, port, novnc_dir)
    else:
        server = ViewerServer(session, port)
    try:
        session.open()
        server.start()
        for line in server.instructions(login_host(), user_name()):
            print(line, flush=True)
        code = session.wait()
    finally:
        session.close()
        server.close()
    say("the session ended; its password no longer works" if code == VncExit.ENDED
        else f"VM {target.vm_name} ended: the session is over")
    return int(code)


def login_host() -> str:
    return socket.gethostname()


def user_name() -> str:
    from .lifecycle import current_user
    return current_user()


def say(message: str) -> None:
    print(f"slurm-vm: {message}", file=sys.stderr, flush=True)
