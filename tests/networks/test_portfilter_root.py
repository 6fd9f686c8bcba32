"""Anti-spoofing on real ports (root, private network namespaces): a fake guest writes frames into a tap or
macvtap fd, as a hypervisor does, and a witness on the other side (the bridge, the macvtap's parent link)
records which arrive. The filters come from the same plan and executor as the prolog's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

from slurm_vm.networks.portfilter import PortFilter, ruleset

pytestmark = pytest.mark.root
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAC, OTHER_MAC = "02:00:00:00:40:00", "02:00:00:00:80:00"
OWN_IP, OTHER_IP = "10.9.0.5", "10.9.0.6"
ADDRESSES = (f"{OWN_IP}/24", "fd00:9::5/64")     # the fake guest's own addresses (spoofing.OWN_IP6)


def ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True, timeout=20)


def in_ns(netns: str, code: str) -> str:
    proc = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c",
                           f"import sys; sys.path.insert(0, {REPO!r})\n" + code],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def apply(netns: str, job: int, ports: list[PortFilter]) -> None:
    in_ns(netns, "from slurm_vm.networks import nft\nimport json\n"
                 f"nft.apply_ruleset(json.loads({json.dumps(json.dumps(ruleset(job, ports)))}))")


def send(netns: str, **args) -> dict:
    args.update(mac=MAC, own_ip=OWN_IP, other_mac=OTHER_MAC, other_ip=OTHER_IP)
    out = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", sys.executable,
                          os.path.join(REPO, "tests", "networks", "spoofing.py"), json.dumps(args)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"pf{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def bridged_tap(netns):
    ip(netns, "link", "add", "br0", "type", "bridge")
    ip(netns, "link", "set", "br0", "up")
    in_ns(netns, "from slurm_vm.networks import links\nlinks.create_tap('svm42n0', 0, 0, bridge='br0')")
    return netns


def test_unfiltered_tap_lets_everything_through(bridged_tap):
    """The control: without rules every spoofed frame reaches the bridge (so the tests below can fail)."""
    result = send(bridged_tap, port="svm42n0", witness="br0")
    assert result["seen"] == result["all"]


def test_filtered_tap_on_a_bridge_sends_only_its_own_traffic(bridged_tap):
    apply(bridged_tap, 42, [PortFilter("svm42n0", "ingress", MAC, ADDRESSES, vxlan_ports=(4789,))])
    result = send(bridged_tap, port="svm42n0", witness="br0")
    assert result["seen"] == result["expected"]


def test_admin_flags_let_dhcp_and_router_advertisements_through(bridged_tap):
    apply(bridged_tap, 42, [PortFilter("svm42n0", "ingress", MAC, ADDRESSES, allow_dhcp_server=True,
                                       allow_router_advertisements=True, vxlan_ports=(4789,))])
    result = send(bridged_tap, port="svm42n0", witness="br0")
    assert result["seen"] == sorted(result["expected"] + ["bootp-reply-to-relay", "dhcp-server", "dhcp-to-client-port",
                                                          "dhcpv6-server", "dhcpv6-to-client-port", "router-advert"])


def test_mac_only_port_may_use_any_address_but_no_server_roles(bridged_tap):
    apply(bridged_tap, 42, [PortFilter("svm42n0", "ingress", MAC, None, vxlan_ports=(4789,))])
    result = send(bridged_tap, port="svm42n0", witness="br0")
    assert result["seen"] == sorted(result["expected"] + ["arp-claims-other-ip", "ipv4-other-ip",
                                                          "ipv6-global-source", "nd-advert-other-target",
                                                          "nd-dad-other"])


def test_filtered_macvtap_sends_only_its_own_traffic(netns):
    ip(netns, "link", "add", "up0", "type", "veth", "peer", "name", "up0p")
    ip(netns, "link", "set", "up0", "up")
    ip(netns, "link", "set", "up0p", "up")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        device = os.path.join(tmp, "macvtap0")
        in_ns(netns, "from slurm_vm.networks import links\n"
                     f"links.create_macvtap('svm43n0', 'up0', {MAC!r}, 'bridge', 0, 0, {device!r})")
        control = send(netns, device=device, witness="up0p")
        assert control["seen"] == control["all"]
        apply(netns, 43, [PortFilter("svm43n0", "egress", MAC, ADDRESSES, vxlan_ports=(4789,))])
        result = send(netns, device=device, witness="up0p")
        assert result["seen"] == result["expected"]
