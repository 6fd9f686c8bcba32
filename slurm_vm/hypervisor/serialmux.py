"""The serial console of a VMM that cannot log it itself (cloud-hypervisor's `--serial socket=`).

The launcher is the VMM serial socket's one client: it appends everything the guest prints to
serial.log, and serves the job's serial.sock (the user's only) to one interactive client at a time,
forwarding its keystrokes to the guest. QEMU does the same by itself (`-chardev socket,logfile=`).
A second client while one is attached is told so and closed: `slurm-vm console` refuses it earlier.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time

BUSY = b"\r\nslurm-vm: the serial console is in use by another session\r\n"
CHUNK = 65536


class SerialMux(threading.Thread):
    def __init__(self, vmm_socket: str, log_path: str, client_socket: str, connect_timeout: float = 30.0):
        super().__init__(name="serial-mux", daemon=True)
        self.vmm_socket, self.log_path, self.client_socket = vmm_socket, log_path, client_socket
        self.connect_timeout = connect_timeout
        self._stopping = threading.Event()
        self.listener = listen_private(client_socket, 4)
        self.log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        self.vmm: socket.socket | None = None
        self.client: socket.socket | None = None

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        try:
            self.vmm = self._connect_vmm()
            if self.vmm is not None:
                self._loop()
        finally:
            for sock in (self.client, self.vmm, self.listener):
                if sock is not None:
                    sock.close()
            os.close(self.log_fd)

    def _connect_vmm(self) -> socket.socket | None:
        deadline = time.monotonic() + self.connect_timeout
        while not self._stopping.is_set() and time.monotonic() < deadline:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.vmm_socket)
                return sock
            except OSError:
                sock.close()
                time.sleep(0.05)
        return None

    def _loop(self) -> None:
        self.sel = sel = selectors.DefaultSelector()
        sel.register(self.vmm, selectors.EVENT_READ, "vmm")
        sel.register(self.listener, selectors.EVENT_READ, "listener")
        while not self._stopping.is_set():
            for key, _ in sel.select(timeout=0.2):
                if key.data == "vmm" and not self._from_vmm():
                    return
                if key.data == "listener":
                    self._accept(sel)
                if key.data == "client":
                    self._from_client(sel)

    def _from_vmm(self) -> bool:
        data = self.vmm.recv(CHUNK)  # type: ignore[union-attr]
        if not data:
            return False
        os.write(self.log_fd, data)
        if self.client is not None:
            try:
                self.client.sendall(data)
            except OSError:
                self._drop_client(self.sel)
        return True

    def _accept(self, sel: selectors.BaseSelector) -> None:
        conn, _ = self.listener.accept()
        if self.client is not None:
            try:
                conn.sendall(BUSY)
            except OSError:
                pass
            conn.close()
            return
        self.client = conn
        sel.register(conn, selectors.EVENT_READ, "client")

    def _from_client(self, sel: selectors.BaseSelector) -> None:
        try:
            data = self.client.recv(CHUNK)  # type: ignore[union-attr]
        except OSError:
            data = b""
        if data:
            self.vmm.sendall(data)  # type: ignore[union-attr]
        else:
            self._drop_client(sel)

    def _drop_client(self, sel: selectors.BaseSelector) -> None:
        if self.client is None:
            return
        sel.unregister(self.client)
        self.client.close()
        self.client = None


def listen_private(path: str, backlog: int) -> socket.socket:
    """A unix socket only the launcher's user can connect to (0700 from the umask at bind time)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o077)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(backlog)
    return sock
