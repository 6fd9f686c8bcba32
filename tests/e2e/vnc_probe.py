"""A VNC client for the tests: `python vnc_probe.py SERVER PASSWORD|- PNG [TEXT]`.

SERVER is host::port or a unix socket path. First an RFB 3.8 handshake by hand (fast, and it tells why a
connection is refused: closed at once, no password, authentication failed), then, when it succeeded,
vncdotool types TEXT and Enter (US layout, Shift pressed for shifted characters, as a viewer would) and
captures the screen to PNG. Prints `captured` and exits 0, or `refused: why` and exits 1. Run as a process
of its own (as any user): vncdotool's Twisted reactor cannot be restarted in one process.
"""

from __future__ import annotations

import socket
import struct
import sys

SHIFTED = dict(zip('~!@#$%^&*()_+{}|:"<>?', "`1234567890-=[]\\;',./"))
TIMEOUT = 60.0


def _open(server: str) -> socket.socket:
    if "::" in server:
        host, port = server.split("::")
        return socket.create_connection((host, int(port)), timeout=TIMEOUT)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(server)
    return sock


def _exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


def handshake(server: str, password: str | None) -> str | None:
    """None when the server accepted `password`, else why not."""
    from vncdotool.rfb import _vnc_des, des_encrypt
    try:
        with _open(server) as sock:
            if not _exact(sock, 12).startswith(b"RFB "):
                return "not an RFB server"
            sock.sendall(b"RFB 003.008\n")
            types = _exact(sock, _exact(sock, 1)[0])
            if 2 not in types:
                return f"no VNC authentication offered ({list(types)})"
            if password is None:
                return "the server wants a password and none was given"
            sock.sendall(bytes([2]))
            sock.sendall(des_encrypt(_vnc_des(password), _exact(sock, 16)))
            if struct.unpack(">I", _exact(sock, 4))[0] != 0:
                reason = _exact(sock, struct.unpack(">I", _exact(sock, 4))[0]).decode(errors="replace")
                return f"authentication failed: {reason}"
    except (OSError, ConnectionError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def capture(server: str, password: str, png: str, text: str) -> None:
    from vncdotool import api
    try:
        client = api.connect(server, password=password, timeout=TIMEOUT)
        try:
            for char in text:
                if char.isupper() or char in SHIFTED:
                    client.keyDown("shift")
                    client.keyPress(SHIFTED.get(char, char))
                    client.keyUp("shift")
                else:
                    client.keyPress("space" if char == " " else char)
            if text:
                client.keyPress("enter")
            client.captureScreen(png)
        finally:
            client.disconnect()
    finally:
        api.shutdown()


def main(server: str, password: str, png: str, text: str = "") -> int:
    why = handshake(server, None if password == "-" else password)
    if why:
        print(f"refused: {why}", flush=True)
        return 1
    capture(server, password, png, text)
    print("captured", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
