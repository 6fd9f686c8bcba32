"""Who is at the other end of a loopback TCP connection: the login side's ports (`slurm-vm vnc`, its browser
bridge) serve only their user's own processes (and root's). Login nodes are shared, and 127.0.0.1 is not private:
the owner of the connecting socket is read from /proc/net/tcp (its fixed columns, no tool output).
"""

from __future__ import annotations

import os
import socket
import struct


def tcp_key(address: tuple[str, int]) -> str:
    """An IPv4 endpoint as /proc/net/tcp spells it (address in host byte order, port, both in hex)."""
    return f"{struct.unpack('=I', socket.inet_aton(address[0]))[0]:08X}:{address[1]:04X}"


def socket_owner(table: str, local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The uid owning the socket whose local end is `local` and remote end `remote`, in /proc/net/tcp text."""
    want = (tcp_key(local), tcp_key(remote))
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and (fields[1], fields[2]) == want:
            return int(fields[7])
    return None


def peer_uid(conn: socket.socket) -> int | None:
    """The owner of the other end of a loopback TCP connection (None if it cannot be told)."""
    try:
        with open("/proc/net/tcp") as fh:
            table = fh.read()
    except OSError:
        return None
    return socket_owner(table, conn.getpeername(), conn.getsockname())


def allowed(conn: socket.socket, uid: int | None = None) -> bool:
    return peer_uid(conn) in {os.getuid() if uid is None else uid, 0}
