"""Anti-spoofing through Slurm: a tiny guest (root inside is its user) claims another VM's IP, answers ARP
for it, runs a DHCP server and changes its MAC; the node on the bridge must see none of it while the
guest's own traffic still works. The same guest on a `trusted` network is seen doing all of it.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from devtools.vmcluster import NODE_BRIDGE

pytestmark = [pytest.mark.cluster, pytest.mark.guest]
HERE = os.path.dirname(os.path.abspath(__file__))
OWN, CLAIMED, SPOOF_MAC = "10.77.0.11", "10.77.0.10", "02:00:00:99:99:99"

ATTACKER = """name: {name}
image: tiny
memory: 256M
networks:
  - network: {network}
    address: {own}/24
cloud_init:
  user_data: |
    #cloud-config
    write_files:
    - path: /tmp/attack.sh
      content: |
        ping -c 2 -W 2 10.77.0.1 >/dev/null && echo "SVMTEST own-ping-ok"
        ip addr add {claimed}/32 dev eth0
        arping -U -c 3 -I eth0 -s {claimed} {claimed}
        arping -A -c 3 -I eth0 -s {claimed} {claimed}
        ping -c 3 -W 1 -I {claimed} 10.77.0.1 >/dev/null
        printf 'start 10.77.0.100\\nend 10.77.0.110\\ninterface eth0\\nlease_file /tmp/leases\\n' > /tmp/u.conf
        touch /tmp/leases
        udhcpd /tmp/u.conf && echo "SVMTEST udhcpd-up"
        sleep 12
        ip link set eth0 down
        ip link set eth0 address {spoof_mac}
        ip link set eth0 up
        ping -c 3 -W 1 10.77.0.1 >/dev/null
        echo "SVMTEST attack-done"
    runcmd:
      - sh /tmp/attack.sh > /dev/console 2>&1 &
"""


def attack(vc, network: str, name: str) -> tuple[list[dict], int, str]:
    """Run the attacking guest on `network`; return what reached the node's bridge, udhcpc's exit status and
    the serial log."""
    node = vc.cluster.nodes[0]
    stop = os.path.join(vc.directory, f"stop-witness-{name}")
    witness_argv = [sys.executable, os.path.join(HERE, "witness.py"), NODE_BRIDGE, stop, "400"]
    with ThreadPoolExecutor(max_workers=1) as pool:
        witness = pool.submit(vc.cluster.node_exec, node, witness_argv, timeout=420)
        job = vc.submit(ATTACKER.format(name=name, network=network, own=OWN, claimed=CLAIMED,
                                        spoof_mac=SPOOF_MAC), f"--nodelist={node}", name=name)
        try:
            vc.wait_state(job, {"RUNNING"}, timeout=180)
            vc.wait_serial(node, job, "SVMTEST udhcpd-up", timeout=300)
            dhcp = vc.cluster.node_exec(node, ["busybox", "udhcpc", "-i", NODE_BRIDGE, "-n", "-q", "-t", "3",
                                               "-T", "2", "-s", "/bin/true"], timeout=60)
            serial = vc.wait_serial(node, job, "SVMTEST attack-done", timeout=180)
        finally:
            with open(stop, "w"):
                pass
            vc.cluster.client(["scancel", str(job)], user="svmtest")
        captured = witness.result()
    assert captured.returncode == 0, captured.stderr
    assert vc.wait_gone_or_ended(job, timeout=120) == "CANCELLED"
    vc.wait_no_leaks(job)
    return json.loads(captured.stdout), dhcp.returncode, serial


def spoofed(frames: list[dict]) -> dict[str, int]:
    return {
        "foreign source MAC": sum(f["src"] == SPOOF_MAC for f in frames),
        "ARP for the claimed IP": sum(f.get("arp_sender_ip") == CLAIMED for f in frames),
        "IPv4 from the claimed IP": sum(f.get("ip_src") == CLAIMED for f in frames),
        "DHCP server replies": sum(f.get("udp_sport") == 67 for f in frames),
    }


def test_a_spoofing_guest_reaches_nobody_and_trusted_lets_it_through(vm_cluster):
    vc = vm_cluster
    frames, dhcp_status, serial = attack(vc, "lan", "spoofer")
    assert "SVMTEST own-ping-ok" in serial, serial                          # normal traffic works
    assert any(f.get("ip_src") == OWN for f in frames)
    assert spoofed(frames) == dict.fromkeys(spoofed([]), 0), spoofed(frames)
    assert dhcp_status != 0                                                 # no lease from the guest

    frames, dhcp_status, serial = attack(vc, "lan-open", "trusted")
    counts = spoofed(frames)
    assert all(counts.values()), counts                                     # the control: it does happen
    assert dhcp_status == 0


MACVTAP = """name: direct
image: tiny
memory: 256M
networks:
  - network: direct
    address: {address}/24
"""


def test_macvtap_guest_through_a_node_the_user_cannot_keep(vm_cluster):
    """The launcher, as the job's user, opens the macvtap through a root-owned node with an ACL entry; the
    guest is reachable from another node; the node is gone after the job."""
    vc = vm_cluster
    first, second = vc.cluster.nodes[0], vc.cluster.nodes[1]
    address = vc.cluster.subnet + ".200"
    job = vc.submit(MACVTAP.format(address=address), f"--nodelist={first}", name="direct")
    try:
        vc.wait_state(job, {"RUNNING"}, timeout=180)
        vc.wait_serial(first, job, "SLURM-VM-TEST ready", timeout=240)
        nodes_dir = os.path.join(vc.node_state(first), "nics", str(job))
        [name] = os.listdir(nodes_dir)
        st = os.stat(os.path.join(nodes_dir, name))
        assert st.st_uid == 0 and os.stat(nodes_dir).st_uid == 0
        ping = vc.cluster.node_exec(second, ["ping", "-c", "3", "-W", "3", address], timeout=60)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        vc.cluster.client(["scancel", str(job)], user="svmtest")
    assert vc.wait_gone_or_ended(job, timeout=120) == "CANCELLED"
    vc.wait_no_leaks(job)
    assert not os.path.exists(os.path.join(vc.node_state(first), "nics", str(job)))
