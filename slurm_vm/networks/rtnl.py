"""The hooks' hot path in rtnetlink, over one raw socket: tap create, link set/lookup/delete/dump.

pyroute2 costs a node hook ~50-100 ms of imports (asyncio and its message classes) for a handful of
messages; this module sends them itself. Written from the kernel's UAPI headers (linux/netlink.h,
linux/rtnetlink.h, linux/if_link.h, linux/if_tun.h). macvtap and VXLAN keep using pyroute2.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x2, 0x4, 0x300
IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_EXT_MASK = 3, 4, 10, 29
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFF_UP = 0x1

TUNSETIFF, TUNSETPERSIST, TUNSETOWNER, TUNSETGROUP = 0x400454CA, 0x400454CB, 0x400454CC, 0x400454CE
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000

NLMSGHDR = struct.Struct("=IHHII")      # len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")    # family, pad, type, index, flags, change
RTATTR = struct.Struct("=HH")           # len, type
IFNAMSIZ = 16


class NetlinkError(OSError):
    """A negative acknowledgement from the kernel (errno and its text)."""


def _attr(kind: int, payload: bytes) -> bytes:
    data = RTATTR.pack(RTATTR.size + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _name_attr(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"/" in raw or b"\0" in raw:
        raise ValueError(f"invalid interface name {name!r}")
    return _attr(IFLA_IFNAME, raw + b"\0")


def _attrs(data: bytes) -> dict[int, bytes]:
    out, offset = {}, 0
    while offset + RTATTR.size <= len(data):
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size:
            break
        out[kind & 0x3FFF] = data[offset + RTATTR.size:offset + length]
        offset += (length + 3) & ~3
    return out


class Rtnl:
    """One NETLINK_ROUTE socket in the current network namespace (a context manager)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self.seq += 1
        self.sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags | NLM_F_REQUEST, self.seq, 0) + body)
        return self.seq

    def _replies(self, seq: int):
        """(type, payload) of each message answering `seq`, up to its ack, error or dump end."""
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + NLMSGHDR.size <= len(data):
                length, kind, flags, got_seq, _ = NLMSGHDR.unpack_from(data, offset)
                if length < NLMSGHDR.size:
                    return
                payload = data[offset + NLMSGHDR.size:offset + length]
                offset += (length + 3) & ~3
                if got_seq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise NetlinkError(code, os.strerror(code))
                    return
                if kind == NLMSG_DONE:
                    return
                yield kind, payload
                if not flags & NLM_F_MULTI:
                    return

    def request(self, kind: int, body: bytes, flags: int = NLM_F_ACK) -> list[tuple[int, bytes]]:
        return list(self._replies(self._send(kind, flags, body)))

    def link_index(self, name: str) -> int | None:
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _name_attr(name) + \
            _attr(IFLA_EXT_MASK, struct.pack("=I", RTEXT_FILTER_SKIP_STATS))
        try:
            replies = self.request(RTM_GETLINK, body, flags=0)
        except NetlinkError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
        for kind, payload in replies:
            if kind == RTM_NEWLINK:
                return IFINFOMSG.unpack_from(payload)[2]
        return None

    def set_link(self, index: int, up: bool = False, master: int | None = None, mtu: int | None = None) -> None:
        attrs = b""
        if master is not None:
            attrs += _attr(IFLA_MASTER, struct.pack("=I", master))
        if mtu is not None:
            attrs += _attr(IFLA_MTU, struct.pack("=I", mtu))
        flags = IFF_UP if up else 0
        self.request(RTM_NEWLINK, IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, flags) + attrs)

    def delete_link(self, name: str) -> bool:
        """Delete `name`; False if there was no such link."""
        try:
            self.request(RTM_DELLINK, IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _name_attr(name))
        except NetlinkError as exc:
            if exc.errno == errno.ENODEV:
                return False
            raise
        return True

    def link_names(self) -> list[str]:
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + \
            _attr(IFLA_EXT_MASK, struct.pack("=I", RTEXT_FILTER_SKIP_STATS))
        names = []
        for kind, payload in self._replies(self._send(RTM_GETLINK, NLM_F_DUMP, body)):
            if kind == RTM_NEWLINK:
                raw = _attrs(payload[IFINFOMSG.size:]).get(IFLA_IFNAME, b"")
                names.append(raw.split(b"\0", 1)[0].decode("utf-8", "replace"))
        return names


def create_persistent_tap(name: str, uid: int, gid: int) -> None:
    """A persistent tap (no packet info, vnet header) owned by uid/gid, in the current namespace."""
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ:
        raise ValueError(f"invalid interface name {name!r}")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", raw, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        fcntl.ioctl(fd, TUNSETOWNER, uid)
        fcntl.ioctl(fd, TUNSETGROUP, gid)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)
