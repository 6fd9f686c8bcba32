"""Unicast VXLAN over real netlink and nftables in network namespaces (root): head-end replication to
exactly the job's nodes, learning off, and an outsider VTEP that knows the VNI reaches nobody."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

import pytest

from tests.networks.test_links import in_ns, ip, links, netns  # noqa: F401  (fixture)

pytestmark = pytest.mark.root
VNI = 6100


def _underlay(netns, family: int) -> tuple[list[str], list[str], str]:
    """Four namespaces on one bridge namespace: three job nodes and an outsider. No multicast route."""
    hub = netns()
    ip(hub, "link", "add", "hubbr", "type", "bridge")
    ip(hub, "link", "set", "hubbr", "up")
    names, addrs = [], []
    for i in range(4):
        ns = netns()
        subprocess.run(["ip", "link", "add", f"u{i}", "netns", ns, "type", "veth", "peer", "name", f"h{i}",
                        "netns", hub], check=True)
        ip(hub, "link", "set", f"h{i}", "master", "hubbr", "up")
        addr = f"10.56.0.{i + 1}" if family == 4 else f"fd00:56::{i + 1}"
        ip(ns, "addr", "add", f"{addr}/{24 if family == 4 else 64}", "dev", f"u{i}", *(["nodad"] if family == 6 else []))
        ip(ns, "link", "set", f"u{i}", "up")
        ip(ns, "link", "set", "lo", "up")
        names.append(ns)
        addrs.append(addr)
    return names, addrs, hub


def _ping(ns: str, target: str) -> bool:
    proc = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "2", "-W", "2", target], capture_output=True,
                          text=True, timeout=30)
    return proc.returncode == 0


def _dropped(ns: str) -> int:
    """Packets the segment's VTEP filter dropped (its counter)."""
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", f"svmvx{VNI}"],
                         capture_output=True, text=True, timeout=20, check=True).stdout
    rules = [item["rule"] for item in json.loads(out)["nftables"] if "rule" in item]
    return sum(e["counter"]["packets"] for r in rules for e in r["expr"] if "counter" in e)


def _nft_tables(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True, text=True,
                          timeout=20).stdout


@pytest.mark.parametrize("family", [4, 6])
def test_unicast_segment_reaches_exactly_the_jobs_nodes(netns, family):
    if not os.path.exists("/usr/sbin/nft"):
        pytest.skip("nftables is not installed (scripts/install-deps installs it)")
    names, addrs, _ = _underlay(netns, family)
    job_nodes = names[:3]
    with tempfile.TemporaryDirectory(dir="/var/tmp") as locks:
        for i, ns in enumerate(job_nodes):
            peers = tuple(a for j, a in enumerate(addrs[:3]) if j != i)
            code = ("from slurm_vm.networks.unicast import Unicast\n"
                    f"print(links.ensure_vxlan_segment({VNI}, 900, 'u{i}', {locks + ns!r}, private=True, "
                    f"unicast=Unicast({addrs[i]!r}, {peers!r})))")
            proc = in_ns(ns, code)
            assert proc.returncode == 0, proc.stderr
            data = links(ns)[f"svmvx{VNI}"]["linkinfo"]["info_data"]
            assert data["learning"] is False and "group" not in data and "group6" not in data
            fdb = in_ns(ns, f"from slurm_vm.networks.links import _ipr\nfrom slurm_vm.networks.unicast import "
                            f"peer_entries\nwith _ipr() as r: print(peer_entries(r, {VNI}))")
            assert fdb.stdout.strip() == str(sorted(peers)), fdb.stderr
            for dev in (f"svmbr{VNI}", f"svmvx{VNI}"):   # no IPv6 chatter between the nodes while we count
                subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"],
                               check=True)
            ip(ns, "addr", "add", f"192.168.61.{i + 1}/24", "dev", f"svmbr{VNI}")
            assert f"svmvx{VNI}" in _nft_tables(ns)
        # the outsider knows the VNI and sends to every job node, with learning on (as an attacker would)
        outsider = names[3]
        ip(outsider, "link", "add", "evil", "type", "vxlan", "id", str(VNI), "dstport", "4789", "dev", "u3",
           "local", addrs[3])
        for addr in addrs[:3]:
            subprocess.run(["ip", "netns", "exec", outsider, "bridge", "fdb", "append", "00:00:00:00:00:00",
                            "dev", "evil", "dst", addr], check=True)
        ip(outsider, "addr", "add", "192.168.61.99/24", "dev", "evil")
        ip(outsider, "link", "set", "evil", "up")
        for src in job_nodes:
            for k in range(3):
                if names[k] != src:
                    assert _ping(src, f"192.168.61.{k + 1}"), f"{src} cannot reach node {k}"
        evil_mac = links(outsider)["evil"]["address"]
        assert not _ping(outsider, "192.168.61.1")
        # delivered frames would have taught node 0's segment bridge the outsider's MAC and its ARP table .99
        fdb = subprocess.run(["ip", "netns", "exec", job_nodes[0], "bridge", "fdb", "show", "br", f"svmbr{VNI}"],
                             capture_output=True, text=True, timeout=20).stdout
        neigh = ip(job_nodes[0], "neigh", "show", "dev", f"svmbr{VNI}").stdout
        assert evil_mac not in fdb and "192.168.61.99" not in neigh, (fdb, neigh)
        assert _dropped(job_nodes[0]) > 0
        assert not _ping(job_nodes[0], "192.168.61.99")
        # a node whose reference record is lost: node doctor's orphan check sees the segment and its FDB peers
        os.unlink(os.path.join(locks + job_nodes[2], f"vxlan-{VNI}.json"))
        orphan = in_ns(job_nodes[2], f"print(links.orphan_segments({locks + job_nodes[2]!r}))")
        assert orphan.stdout.strip() == str([(VNI, sorted(addrs[:2]))]), orphan.stderr
        assert in_ns(job_nodes[2], f"links.delete_orphan_segment({VNI}, {locks + job_nodes[2]!r})").returncode == 0
        assert f"svmvx{VNI}" not in links(job_nodes[2]) and f"svmvx{VNI}" not in _nft_tables(job_nodes[2])
        for ns in job_nodes[:2]:
            assert in_ns(ns, f"links.release_vxlan_segment({VNI}, 900, {locks + ns!r})").returncode == 0
            assert f"svmvx{VNI}" not in links(ns) and f"svmvx{VNI}" not in _nft_tables(ns)


def test_filter_script_names_the_vni_and_peers():
    from slurm_vm.networks.unicast import vtep_filter_script
    script = vtep_filter_script(77, 4789, ("10.0.0.2", "fd00::3"))
    assert "udp dport 4789 @th,96,24 77 ip saddr { 10.0.0.2 } accept" in script
    assert "ip6 saddr { fd00::3 } accept" in script
    assert script.rstrip().splitlines()[-3].strip() == "udp dport 4789 @th,96,24 77 counter drop"
    with pytest.raises(ValueError):
        vtep_filter_script(77, 4789, ("10.0.0.2; flush ruleset",))
