"""The VXLAN underlay belongs to root, on real netlink and nftables in network namespaces (root).

Three nodes on one hub: A and B carry a multicast segment (VNI 5000, as the prolog makes it), C carries
none. A real unprivileged uid (svmother, 4202) on C (another node) and on A (a node the job shares) tries
to bind the VXLAN port and to send VXLAN frames into the segment; a witness on B's segment bridge shows
what arrives. The kernel's own segment traffic still passes.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile

import pytest

from tests.networks.test_links import in_ns, ip, links

pytestmark = pytest.mark.root
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OTHER_UID = 4202
VNI = 5000
GROUP = "239.0.19.136"

USER_CODE = r"""
import json, socket, struct, sys
args = json.loads(sys.argv[1])
out = {}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
try:
    s.bind(("0.0.0.0", 4789))
    out["bind"] = "ok"
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(args["group"]) + socket.inet_aton(args["local"]))
    s.settimeout(args.get("listen", 0))
    try:
        while args.get("listen"):
            data = s.recv(2048)
            if data[:1] == b"\x08":
                out["received"] = True
                break
    except OSError:
        pass
except OSError as exc:
    out["bind"] = exc.errno
if args.get("send"):
    frame = bytes.fromhex("ffffffffffff" + "520000000001" + "88b5") + b"SVMINJECT" * 4
    vx = struct.pack("!II", 0x08000000, args["vni"] << 8) + frame
    t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(3):
            t.sendto(vx, (args["send"], 4789))
        out["sent"] = "ok"
    except OSError as exc:
        out["sent"] = exc.errno
print(json.dumps(out))
"""

TAP_CODE = r"""
import fcntl, os, struct, sys, time
fd = os.open(sys.argv[2], os.O_RDWR)   # the user opens the tun device, as QEMU and the launcher do
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", sys.argv[1].encode(), 0x0002 | 0x1000 | 0x4000))  # TAP NO_PI VNET_HDR
frame = bytes.fromhex(sys.argv[3].replace(":", "") + "520000000002" + "88b5") + b"SVMTAPOK" * 4
for _ in range(15):                   # the bridge port forwards once the carrier event is handled (up to 1 s)
    os.write(fd, bytes(10) + frame)   # an empty virtio-net header, then the guest's frame
    time.sleep(0.2)
print("written")
"""

WITNESS_CODE = r"""
import select, socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0))
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
seen = False
while time.monotonic() < deadline:
    if select.select([s], [], [], 0.1)[0] and sys.argv[3].encode() in s.recv(65535):
        seen = True
print("SEEN" if seen else "NOTHING", flush=True)
"""


def as_user(ns: str, args: dict) -> dict:
    proc = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "setpriv", "--reuid", str(OTHER_UID), "--regid",
                           str(OTHER_UID), "--clear-groups", "/usr/bin/python3", "-c", USER_CODE, json.dumps(args)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def underlay(ns: str, setup: bool) -> subprocess.CompletedProcess:
    code = ("from slurm_vm.networks import underlay as u\n"
            "u.ensure_underlay(u.UnderlayPlan((4789,), ('vmbr0',)))\n") if setup else ""
    return in_ns(ns, code)


@pytest.fixture
def nodes():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    base = f"netu{os.getpid() % 100000}"
    names = [f"{base}{x}" for x in ("a", "b", "c", "h")]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    hub = names[3]
    ip(hub, "link", "add", "hubbr", "type", "bridge")
    ip(hub, "link", "set", "hubbr", "up")
    for i, ns in enumerate(names[:3]):
        subprocess.run(["ip", "link", "add", f"u{i}", "netns", ns, "type", "veth", "peer", "name", f"h{i}",
                        "netns", hub], check=True)
        ip(hub, "link", "set", f"h{i}", "master", "hubbr", "up")
        ip(ns, "addr", "add", f"10.57.0.{i + 1}/24", "dev", f"u{i}")
        ip(ns, "link", "set", f"u{i}", "up")
        ip(ns, "link", "set", "lo", "up")
    yield names[:3]
    for name in names:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _segments(a: str, b: str, locks: str) -> None:
    for ns, dev, addr in ((a, "u0", "192.168.57.1/24"), (b, "u1", "192.168.57.2/24")):
        proc = in_ns(ns, f"links.ensure_vxlan_segment({VNI}, 7, {dev!r}, {os.path.join(locks, ns)!r})")
        assert proc.returncode == 0, proc.stderr
        ip(ns, "addr", "add", addr, "dev", f"svmbr{VNI}")


def _ping(ns: str, target: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "2", "-W", "2", target],
                          capture_output=True).returncode == 0


def _witness(b: str, marker: str) -> subprocess.Popen:
    return subprocess.Popen(["nsenter", f"--net=/run/netns/{b}", sys.executable, "-c", WITNESS_CODE,
                             f"svmbr{VNI}", "4", marker], stdout=subprocess.PIPE, text=True)


def _guest_frame_crosses(a: str, b: str) -> bool:
    """A guest's frame, written by the job user into its own tap on A's segment bridge: does B see it?

    Unicast to B's bridge, whose MAC A's bridge has learned behind the segment device (the ping before): the
    bridge forwards the tap's own skb, which keeps the tap's socket (the user's), not a flood's clone."""
    mac = json.loads(ip(b, "-j", "link", "show", f"svmbr{VNI}").stdout)[0]["address"]
    made = in_ns(a, f"links.create_tap('svm7n0', {OTHER_UID}, {OTHER_UID}, bridge='svmbr{VNI}')")
    assert made.returncode == 0, made.stderr
    witness = _witness(b, "SVMTAPOK")
    try:
        assert witness.stdout.readline().strip() == "ready"
        with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="net-tun") as devdir:
            tun = os.path.join(devdir, "tun")      # a 0666 tun node, as on a Debian node (this machine's is 0600)
            os.mknod(tun, 0o666 | stat.S_IFCHR, os.makedev(10, 200))
            os.chmod(tun, 0o666)
            os.chmod(devdir, 0o755)
            proc = subprocess.run(["nsenter", f"--net=/run/netns/{a}", "setpriv", "--reuid", str(OTHER_UID),
                                   "--regid", str(OTHER_UID), "--clear-groups", "/usr/bin/python3", "-c", TAP_CODE,
                                   "svm7n0", tun, mac], capture_output=True, text=True, timeout=60)
        assert proc.stdout.strip() == "written", proc.stderr
        return witness.stdout.readline().strip() == "SEEN"
    finally:
        witness.wait(timeout=20)


def _injected(b: str, attacker: str, local: str) -> tuple[dict, bool]:
    """The attacker sends VXLAN frames of the segment to B's underlay address; did B's segment bridge see one?"""
    witness = _witness(b, "SVMINJECT")
    try:
        assert witness.stdout.readline().strip() == "ready"
        result = as_user(attacker, {"group": GROUP, "local": local, "send": "10.57.0.2", "vni": VNI})
        return result, witness.stdout.readline().strip() == "SEEN"
    finally:
        witness.wait(timeout=20)


@pytest.mark.parametrize("setup", [True, False], ids=["underlay-rooted", "without-node-setup"])
def test_unprivileged_user_cannot_receive_or_send_vxlan(nodes, setup):
    a, b, c = nodes
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="net-locks") as locks:
        for ns in nodes:
            assert underlay(ns, setup).returncode == 0
        _segments(a, b, locks)
        assert _ping(a, "192.168.57.2")                    # the kernel's own VXLAN traffic passes
        assert _guest_frame_crosses(a, b)                  # and a guest's, sent from its user's tap
        sniff = as_user(c, {"group": GROUP, "local": "10.57.0.3"})
        from_other_node, seen_other = _injected(b, c, "10.57.0.3")
        from_shared_node, seen_shared = _injected(b, a, "10.57.0.1")
        assert _ping(a, "192.168.57.2")
        if not setup:   # what the attack does on a node without the guard and rules: the test can fail
            assert sniff["bind"] == "ok" and seen_other and seen_shared
            return
        assert sniff["bind"] == 98, sniff                    # EADDRINUSE on the node without a segment
        assert from_shared_node["bind"] == 98                # and on the segment's own node
        assert not seen_other and not seen_shared, (from_other_node, from_shared_node)
        counters = subprocess.run(["ip", "netns", "exec", c, "nft", "-j", "list", "chain", "inet", "svm_underlay",
                                   "output"], capture_output=True, text=True, check=True).stdout
        dropped = [e["counter"]["packets"] for item in json.loads(counters)["nftables"] if "rule" in item
                   for e in item["rule"]["expr"] if "counter" in e]
        assert dropped == [1], dropped                       # the attacker's send, nothing of the kernel's
        assert from_other_node["sent"] == from_shared_node["sent"] == 1      # EPERM: the rule refused it


def test_a_user_holding_the_port_first_is_named_and_setup_fails_without_taking_it(nodes):
    c = nodes[2]
    holder = subprocess.Popen(["nsenter", f"--net=/run/netns/{c}", "setpriv", "--reuid", str(OTHER_UID), "--regid",
                               str(OTHER_UID), "--clear-groups", "/usr/bin/python3", "-c",
                               "import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                               "s.bind(('0.0.0.0',4789))\nprint('bound',flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "bound"
        proc = underlay(c, True)
        assert proc.returncode != 0
        last = proc.stderr.strip().splitlines()[-1]
        assert "PortHeld" in last and "held by a process of uid 4202" in last and "node setup" in last
        report = in_ns(c, "from slurm_vm.networks import underlay as u\n"
                          "print(u.problems(u.UnderlayPlan((4789,))))")
        assert "uid 4202" in report.stdout and "(nftables tables inet and bridge svm_underlay) are missing" in report.stdout
    finally:
        holder.kill()
        holder.wait()
    assert underlay(c, True).returncode == 0                # once the holder is gone, setup takes the port
    assert {"svmgd4-4789", "svmgd6-4789"} <= set(links(c))
