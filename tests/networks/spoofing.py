"""A fake guest for the port-filter tests: writes hand-made frames into a tap or macvtap fd, exactly as a
hypervisor does with what its guest sends, and a witness that captures what reaches the other side.

Run inside the test's network namespace: `python tests/networks/spoofing.py JSON` prints JSON.
Every frame carries a marker after its payload so the witness can tell which ones arrived.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import select
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
VNET_HDR = bytes(10)
BROADCAST = "ff:ff:ff:ff:ff:ff"
ALL_NODES6 = "33:33:00:00:00:01"
MARK = b"@" * 36          # replaced by marker(name), same length, after the frame is built


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def ip_bytes(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ether(src: str, dst: str, ethertype: int, body: bytes) -> bytes:
    return mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", ethertype) + body


def arp(sha: str, spa: str, tpa: str, op: int = 1) -> bytes:
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + mac_bytes(sha) + ip_bytes(spa) + bytes(6) + ip_bytes(tpa)


def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, ip_bytes(src), ip_bytes(dst))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + udp


def ipv6(src: str, dst: str, next_header: int, body: bytes) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(body), next_header, 255) + ip_bytes(src) + ip_bytes(dst) + body


def icmpv6(kind: int, payload: bytes) -> bytes:
    return struct.pack("!BBH", kind, 0, 0) + payload


def udp6(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def nd(kind: int, target: str, option: int | None = None, option_mac: str = "", flags: int = 0) -> bytes:
    """A neighbour solicitation (135) or advertisement (136), with one link-layer option if given."""
    body = struct.pack("!BBHI", kind, 0, 0, flags) + ip_bytes(target)
    return body + (struct.pack("!BB", option, 1) + mac_bytes(option_mac) if option else b"")


OWN_IP6, OTHER_IP6 = "fd00:9::5", "fd00:9::6"
SOLICITED = "33:33:ff:00:00:06"


def nd_frames(mac: str, other_mac: str) -> dict[str, tuple[bytes, bool]]:
    """Neighbour discovery, matched whole by the witness (a marker would make them longer than ND allows)."""
    ns = lambda src, target, opt_mac=None: ether(mac, SOLICITED, 0x86DD, ipv6(src, "ff02::1:ff00:6", 58, nd(
        135, target, 1 if opt_mac else None, opt_mac or "")))
    na = lambda target, opt_mac: ether(mac, ALL_NODES6, 0x86DD, ipv6("fe80::1", "ff02::1", 58, nd(
        136, target, 2, opt_mac, 0x20000000)))
    return {
        "nd-solicit": (ns("fe80::1", OTHER_IP6, mac), True),
        "nd-advert-own": (na(OWN_IP6, mac), True),
        "nd-advert-link-local": (na("fe80::1", mac), True),
        "nd-dad-own": (ns("::", OWN_IP6), True),
        "nd-advert-other-target": (na(OTHER_IP6, mac), False),
        "nd-advert-other-mac": (na("fe80::1", other_mac), False),
        "nd-solicit-other-mac": (ns("fe80::1", OTHER_IP6, other_mac), False),
        "nd-dad-other": (ns("::", OTHER_IP6), False),
    }


def frames(mac: str, own_ip: str, other_mac: str, other_ip: str) -> dict[str, tuple[bytes, bool]]:
    """name -> (frame without marker, whether a filtered port lets it through)."""
    table = {
        "arp-request": (ether(mac, BROADCAST, 0x0806, arp(mac, own_ip, other_ip)), True),
        "arp-probe": (ether(mac, BROADCAST, 0x0806, arp(mac, "0.0.0.0", own_ip)), True),
        "ipv4-own": (ether(mac, BROADCAST, 0x0800, ipv4_udp(own_ip, "255.255.255.255", 5000, 5001, MARK)), True),
        "ipv6-link-local": (ether(mac, ALL_NODES6, 0x86DD, ipv6("fe80::1", "ff02::1", 58, icmpv6(128, MARK))), True),
        "dhcp-client": (ether(mac, BROADCAST, 0x0800, ipv4_udp(own_ip, "255.255.255.255", 68, 67, MARK)), True),
        "changed-mac": (ether(other_mac, BROADCAST, 0x0800, ipv4_udp(own_ip, "255.255.255.255", 5000, 5001,
                                                                      MARK)), False),
        "changed-mac-arp": (ether(other_mac, BROADCAST, 0x0806, arp(other_mac, own_ip, other_ip)), False),
        "arp-claims-other-ip": (ether(mac, BROADCAST, 0x0806, arp(mac, other_ip, other_ip, op=2)), False),
        "arp-other-sender-mac": (ether(mac, BROADCAST, 0x0806, arp(other_mac, own_ip, other_ip)), False),
        "ipv4-other-ip": (ether(mac, BROADCAST, 0x0800, ipv4_udp(other_ip, "255.255.255.255", 5000, 5001,
                                                                 MARK)), False),
        "dhcp-server": (ether(mac, BROADCAST, 0x0800, ipv4_udp(own_ip, "255.255.255.255", 67, 68, MARK)),
                        False),
        "dhcpv6-server": (ether(mac, ALL_NODES6, 0x86DD, ipv6("fe80::1", "ff02::1", 17, udp6(547, 546, MARK))),
                          False),
        "dhcp-to-client-port": (ether(mac, BROADCAST, 0x0800, ipv4_udp(own_ip, "255.255.255.255", 5000, 68, MARK)),
                                False),
        "bootp-reply-to-relay": (ether(mac, BROADCAST, 0x0800, ipv4_udp(own_ip, "255.255.255.255", 5000, 67,
                                                                         b"\x02" + MARK)), False),
        "dhcpv6-to-client-port": (ether(mac, ALL_NODES6, 0x86DD, ipv6("fe80::1", "ff02::1", 17,
                                                                      udp6(5000, 546, MARK))), False),
        "vxlan-port": (ether(mac, BROADCAST, 0x0800, ipv4_udp(own_ip, "255.255.255.255", 5000, 4789, MARK)), False),
        "router-advert": (ether(mac, ALL_NODES6, 0x86DD, ipv6("fe80::1", "ff02::1", 58,
                                                              icmpv6(134, bytes(12) + MARK))),
                          False),
        "ipv6-global-source": (ether(mac, ALL_NODES6, 0x86DD, ipv6("2001:db8::9", "ff02::1", 58,
                                                                   icmpv6(128, MARK))), False),
        "vlan-tagged": (ether(mac, BROADCAST, 0x8100, struct.pack("!HH", 5, 0x0800)
                              + ipv4_udp(own_ip, "255.255.255.255", 5000, 5001, MARK)), False),
    }
    # The marker sits inside IP payloads (a bridge with br_netfilter trims what follows the IP packet) and
    # after ARP bodies.
    return {name: (frame.replace(MARK, marker(name)) + (marker(name) if MARK not in frame else b""), ok)
            for name, (frame, ok) in table.items()}


def marker(name: str) -> bytes:
    return b"SVMMARK:" + name.encode().ljust(24, b"_") + b":END"


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    return fd


def capture_socket(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sock.bind((ifname, 0))
    sock.setblocking(False)
    return sock


def run(args: dict) -> dict:
    """args: port (tap name) or device (macvtap char device path), witness (interface to capture on),
    mac, own_ip, other_mac, other_ip. Returns {"seen": [names]}."""
    witness = capture_socket(args["witness"])
    whole = {frame: name for name, (frame, _) in nd_frames(args["mac"], args["other_mac"]).items()}
    fd = open_tap(args["port"]) if args.get("port") else os.open(args["device"], os.O_RDWR)
    time.sleep(1.0)          # the port comes up when the fd attaches; the bridge needs a moment under load
    table = frames(args["mac"], args["own_ip"], args["other_mac"], args["other_ip"])
    table.update(nd_frames(args["mac"], args["other_mac"]))
    for name, (frame, _) in table.items():
        os.write(fd, VNET_HDR + frame)
    seen: set[str] = set()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        ready, _, _ = select.select([witness], [], [], 0.1)
        if not ready:
            continue
        data = witness.recv(65535)
        if data in whole:
            seen.add(whole[data])
        start = data.find(b"SVMMARK:")
        if start >= 0:
            seen.add(data[start + 8: data.find(b":END", start)].decode().rstrip("_"))
    os.close(fd)
    return {"seen": sorted(seen), "expected": sorted(n for n, (_, ok) in table.items() if ok),
            "all": sorted(table)}


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
