"""Capture what reaches an interface (a node's VM bridge) until a stop file appears; print a JSON summary
per frame: source MAC, EtherType, ARP sender IP, IPv4 source, UDP source port. Run inside the node.

Usage: python witness.py IFACE STOPFILE MAX_SECONDS
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import time


def summary(frame: bytes) -> dict:
    out: dict = {"src": ":".join(f"{b:02x}" for b in frame[6:12]), "type": struct.unpack("!H", frame[12:14])[0]}
    body = frame[14:]
    if out["type"] == 0x0806 and len(body) >= 28:
        out["arp_sender_mac"] = ":".join(f"{b:02x}" for b in body[8:14])
        out["arp_sender_ip"] = socket.inet_ntoa(body[14:18])
    elif out["type"] == 0x0800 and len(body) >= 20:
        out["ip_src"] = socket.inet_ntoa(body[12:16])
        header = (body[0] & 0x0F) * 4
        if body[9] == 17 and len(body) >= header + 4:
            out["udp_sport"] = struct.unpack("!H", body[header:header + 2])[0]
    return out


def main() -> int:
    iface, stop, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sock.bind((iface, 0))
    print("listening", file=sys.stderr, flush=True)
    frames = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and not os.path.exists(stop):
        ready, _, _ = select.select([sock], [], [], 0.2)
        if ready:
            data, address = sock.recvfrom(65535)
            if address[2] != socket.PACKET_OUTGOING:     # what arrives, not what the node sends
                frames.append(summary(data))
    print(json.dumps(frames))
    return 0


if __name__ == "__main__":
    sys.exit(main())
