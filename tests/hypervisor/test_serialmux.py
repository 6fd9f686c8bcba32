"""The launcher's serial multiplexer for cloud-hypervisor (which cannot run here): a real unix socket
server plays the VMM's `--serial socket=` end (one listening socket, bytes both ways)."""

from __future__ import annotations

import os
import socket
import stat
import time

from slurm_vm.hypervisor.serialmux import BUSY, SerialMux


def wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def recv_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def test_log_is_kept_and_one_client_at_a_time_talks_to_the_guest(tmp_path):
    vmm_path, log, user_path = (str(tmp_path / n) for n in ("vmm.sock", "serial.log", "serial.sock"))
    vmm_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    vmm_listener.bind(vmm_path)
    vmm_listener.listen(1)
    mux = SerialMux(vmm_path, log, user_path, connect_timeout=5)
    mux.start()
    guest, _ = vmm_listener.accept()
    assert stat.S_IMODE(os.stat(user_path).st_mode) & 0o077 == 0
    guest.sendall(b"boot line, nobody attached\n")
    wait_for(lambda: b"nobody attached" in open(log, "rb").read())

    first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    first.connect(user_path)
    time.sleep(0.2)
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    second.connect(user_path)
    assert recv_until(second, BUSY.strip()) .strip() == BUSY.strip()
    second.close()
    first.sendall(b"echo $((6*7))\r")
    guest.settimeout(5)
    assert recv_until(guest, b"\r") == b"echo $((6*7))\r"
    guest.sendall(b"42\r\n")
    assert b"42" in recv_until(first, b"42")
    first.close()

    time.sleep(0.2)
    guest.sendall(b"after detach\n")
    third = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    third.connect(user_path)
    time.sleep(0.2)
    guest.sendall(b"hello third\n")
    assert b"hello third" in recv_until(third, b"hello third")
    third.close()
    wait_for(lambda: b"hello third" in open(log, "rb").read())
    assert open(log, "rb").read() == b"boot line, nobody attached\n42\r\nafter detach\nhello third\n"

    guest.close()  # the VMM exits: the mux ends and closes its socket
    mux.join(timeout=5)
    assert not mux.is_alive()
