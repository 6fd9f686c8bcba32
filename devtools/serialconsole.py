"""Type commands into a test guest's serial console and read their output (tests and helpers only).

A VM's serial port is a unix socket in its job dir (`serial.sock`, 0600, the job user's). Unix sockets
are reached by path whatever the network namespace, so root on the host connects straight to a node's
socket: `vc.node_state(node)/jobs/JOB/serial.sock`. QEMU serves one client at a time: while someone is
attached (`slurm-vm console`) a second connection waits until they detach.

    with SerialConsole(path) as console:
        assert console.run("echo $((6*7))") == "42"
"""

from __future__ import annotations

import itertools
import os
import socket
import time

PROMPT_TIMEOUT = 60.0


class SerialConsoleError(Exception):
    pass


class SerialConsole:
    def __init__(self, path: str, timeout: float = PROMPT_TIMEOUT):
        self.path, self.timeout = path, timeout
        self.sock: socket.socket | None = None
        self.seen = b""
        self._count = itertools.count(1)

    def __enter__(self) -> "SerialConsole":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(self.path)
                return
            except OSError as exc:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise SerialConsoleError(f"cannot connect to {self.path}: {exc}") from None
                time.sleep(0.2)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send(self, text: str) -> None:
        assert self.sock is not None
        self.sock.sendall(text.encode())

    def expect(self, marker: str, timeout: float | None = None) -> str:
        """Read until `marker` appears in what was read since the last expect; return that text."""
        assert self.sock is not None
        deadline = time.monotonic() + (timeout or self.timeout)
        needle = marker.encode()
        while needle not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SerialConsoleError(f"{marker!r} not seen on {self.path}; got:\n"
                                         f"{self.seen[-2000:].decode(errors='replace')}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            if not data:
                raise SerialConsoleError(f"{self.path} closed while waiting for {marker!r}")
            self.seen += data
        before, _, self.seen = self.seen.partition(needle)
        return before.decode(errors="replace")

    def run(self, command: str, timeout: float | None = None) -> str:
        """Run a shell command in the guest's console shell; its output without the echo, stripped.

        The command is framed by two markers the shell prints, each typed split in two (`X''-n`) so that
        the echoed line (the tty and the shell's line editor may each echo it, and wrap it at the
        terminal's width) never contains one whole: what lies between them is the command's output."""
        n = next(self._count)
        self.send(f"echo SVM-BEGIN''-{n}; {command}; echo SVM-END''-{n}\r")
        self.expect(f"SVM-BEGIN-{n}", timeout)
        text = self.expect(f"SVM-END-{n}", timeout)
        return text.replace("\r", "").strip()


def job_serial_socket(state_dir: str, job_id: int) -> str:
    """The serial socket of a job on a node whose slurm-vm state dir is `state_dir` (a host path)."""
    return os.path.join(state_dir, "jobs", str(job_id), "serial.sock")
