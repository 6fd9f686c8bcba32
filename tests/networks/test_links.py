"""Taps, macvtaps and VXLAN segments over real netlink, inside private network namespaces (root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import pytest

from slurm_vm.networks.devnode import user_rw_acl

pytestmark = pytest.mark.root
UID = 4201
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ip(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=check, timeout=20)


def links(netns: str) -> dict[str, dict]:
    return {l["ifname"]: l for l in json.loads(ip(netns, "-j", "-d", "link", "show").stdout)}


def in_ns(netns: str, code: str) -> subprocess.CompletedProcess:
    """Run networks-module code inside `netns`, as the prolog would."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c",
                           "import sys; sys.path.insert(0, %r)\nfrom slurm_vm.networks import links\n" % REPO + code],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    made = []

    def make() -> str:
        name = f"tn{os.getpid() % 100000}x{len(made)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_tap_is_owned_up_and_on_the_bridge(netns):
    ns = netns()
    ip(ns, "link", "add", "brx", "type", "bridge")
    proc = in_ns(ns, f"links.create_tap('svm77n0', {UID}, {UID}, bridge='brx', mtu=1400)")
    assert proc.returncode == 0, proc.stderr
    tap = links(ns)["svm77n0"]
    data = tap["linkinfo"]["info_data"]
    assert data["user"] in (UID, "svmtest") and data["group"] in (UID, "svmtest")   # ip names known ids
    assert data["vnet_hdr"] is True and data["pi"] is False
    assert tap["master"] == "brx" and "UP" in tap["flags"] and tap["mtu"] == 1400
    listed = in_ns(ns, "print(links.list_owned_links())").stdout
    assert "('svm77n0', 77, 0)" in listed
    for _ in range(2):
        assert in_ns(ns, "links.delete_link('svm77n0')").returncode == 0
    assert "svm77n0" not in links(ns)


def test_tap_on_a_missing_bridge_names_it(netns):
    ns = netns()
    proc = in_ns(ns, "links.create_tap('svm78n0', 4201, 4201, bridge='nope')")
    assert proc.returncode != 0 and "bridge 'nope' does not exist" in proc.stderr
    assert "svm78n0" not in links(ns)


def test_macvtap_with_its_character_device(netns):
    ns = netns()
    ip(ns, "link", "add", "up0", "type", "veth", "peer", "name", "up0p")  # no dummy module here
    ip(ns, "link", "set", "up0", "up")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        dev = os.path.join(tmp, "macvtap0")
        proc = in_ns(ns, f"print(links.create_macvtap('svm79n0', 'up0', '02:00:00:00:79:00', 'bridge', {UID}, {UID}, "
                         f"{dev!r}))")
        assert proc.returncode == 0, proc.stderr
        link = links(ns)["svm79n0"]
        assert link["linkinfo"]["info_kind"] == "macvtap" and link["address"] == "02:00:00:00:79:00"
        st = os.stat(dev)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o707) == (0, 0, 0o600)   # root's; group bits show the ACL mask
        assert os.getxattr(dev, "system.posix_acl_access") == user_rw_acl(UID)
        index = link["ifindex"]
        major_minor = subprocess.run(
            ["nsenter", f"--net=/run/netns/{ns}", "unshare", "--mount", "sh", "-c",
             f"mount -t sysfs s /mnt && cat /mnt/class/net/svm79n0/macvtap/tap{index}/dev"],
            capture_output=True, text=True, check=True).stdout.strip()
        assert f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" == major_minor
        fd = os.open(dev, os.O_RDWR)   # the device really is this macvtap's queue
        os.close(fd)
    in_ns(ns, "links.delete_link('svm79n0')")


def test_vxlan_segment_carries_traffic_between_two_nodes_and_is_refcounted(netns):
    a, b = netns(), netns()
    subprocess.run(["ip", "link", "add", "tnva", "netns", a, "type", "veth", "peer", "name", "tnvb", "netns", b],
                   check=True)
    for ns, dev, addr in ((a, "tnva", "10.55.0.1/24"), (b, "tnvb", "10.55.0.2/24")):
        ip(ns, "addr", "add", addr, "dev", dev)
        ip(ns, "link", "set", dev, "up")
        ip(ns, "link", "set", "lo", "up")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as locks:
        for ns, dev in ((a, "tnva"), (b, "tnvb")):
            for job in (501, 502):
                proc = in_ns(ns, f"print(links.ensure_vxlan_segment(4242, {job}, {dev!r}, {locks + ns!r}))")
                assert proc.returncode == 0 and proc.stdout.strip() == "svmbr4242", proc.stderr
            vx = links(ns)["svmvx4242"]
            assert vx["linkinfo"]["info_data"]["id"] == 4242 and vx["master"] == "svmbr4242"
        # end points on each side's segment bridge talk across the underlay
        ip(a, "addr", "add", "192.168.99.1/24", "dev", "svmbr4242")
        ip(b, "addr", "add", "192.168.99.2/24", "dev", "svmbr4242")
        ping = subprocess.run(["ip", "netns", "exec", a, "ping", "-c", "3", "-W", "2", "192.168.99.2"],
                              capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout
        assert in_ns(a, f"links.release_vxlan_segment(4242, 501, {locks + a!r})").returncode == 0
        assert "svmvx4242" in links(a)
        assert in_ns(a, f"links.release_vxlan_segment(4242, 502, {locks + a!r})").returncode == 0
        assert in_ns(a, f"links.release_vxlan_segment(4242, 502, {locks + a!r})").returncode == 0
        assert "svmvx4242" not in links(a) and "svmbr4242" not in links(a)


def test_private_segment_refuses_a_second_job(netns):
    ns = netns()
    ip(ns, "link", "add", "up0", "type", "veth", "peer", "name", "up0p")  # no dummy module here
    ip(ns, "link", "set", "up0", "up")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as locks:
        assert in_ns(ns, f"links.ensure_vxlan_segment(77, 1, 'up0', {locks!r}, private=True)").returncode == 0
        proc = in_ns(ns, f"links.ensure_vxlan_segment(77, 2, 'up0', {locks!r}, private=True)")
        assert proc.returncode != 0 and "collide" in proc.stderr
        in_ns(ns, f"links.release_vxlan_segment(77, 1, {locks!r})")


def _join_and_leave(args: tuple[str, str, int]) -> int:
    ns, locks, job = args
    code = (f"links.ensure_vxlan_segment(900, {job}, 'up0', {locks!r})\n"
            f"links.create_tap('svm{job}n0', 4201, 4201, bridge='svmbr900')\n")
    return in_ns(ns, code).returncode


def test_twenty_concurrent_joins_keep_a_consistent_count(netns):
    ns = netns()
    ip(ns, "link", "add", "up0", "type", "veth", "peer", "name", "up0p")  # no dummy module here
    ip(ns, "link", "set", "up0", "up")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as locks:
        jobs = list(range(1000, 1020))
        with ProcessPoolExecutor(max_workers=10) as pool:
            assert list(pool.map(_join_and_leave, [(ns, locks, j) for j in jobs])) == [0] * 20
        with open(os.path.join(locks, "vxlan-900.json")) as fh:
            assert sorted(json.load(fh)["jobs"]) == jobs
        present = links(ns)
        assert all(present[f"svm{j}n0"]["master"] == "svmbr900" for j in jobs)
        code = "".join(f"links.delete_link('svm{j}n0'); links.release_vxlan_segment(900, {j}, {locks!r})\n"
                       for j in jobs)
        assert in_ns(ns, code).returncode == 0
        assert not os.path.exists(os.path.join(locks, "vxlan-900.json"))
        left = links(ns)
        assert not [n for n in left if n.startswith("svm")], left
