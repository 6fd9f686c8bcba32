"""The VXLAN underlay's pure parts: the node's nftables rules, the guard names, /proc/net/udp parsing."""

from __future__ import annotations

from slurm_vm.config import parse_config
from slurm_vm.networks.underlay import (GUARD_VNI, UNDERLAY_MARK, UnderlayPlan, guard_name, held_message,
                                        parse_proc_udp, plan_underlay, ruleset)

PROC = """   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
12482: 00000000:12B5 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 39635 2 00000000823ab094 0
10859: 0100007F:12B5 00000000:0000 07 00000000:00000000 00:00000000 00000000  4202        0 41170 2 000000007ad873a0 0
10860: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41171 2 000000007ad873a0 0
"""


def test_proc_udp_names_every_socket_on_the_port_with_its_owner():
    holders = parse_proc_udp(PROC, 4789, 4)
    assert [(h.uid, h.inode) for h in holders] == [(0, 39635), (4202, 41170)]
    assert "uid 4202" in held_message(4789, holders) and "slurm-vm node setup" in held_message(4789, holders)


def test_plan_from_config_has_every_vxlan_port_and_the_vm_bridges():
    config = parse_config("""
images: {}
networks:
  lan: {kind: bridge, bridge: br-vm}
  a: {kind: vxlan, parent: eth0, vni: 10}
  b: {kind: vxlan, parent: eth0, vni_range: [100, 200], port: 4790}
""", "test")
    assert plan_underlay(config) == UnderlayPlan((4789, 4790), ("br-vm",))
    assert plan_underlay(parse_config("images: {}\nnetworks: {lan: {kind: bridge, bridge: b}}\n", "t")) is None


def test_ruleset_drops_user_sockets_and_vm_faces_only_on_the_vxlan_ports():
    doc = ruleset(UnderlayPlan((4789,), ("br-vm",)))["nftables"]
    rules = [c["add"]["rule"] for c in doc if "rule" in c.get("add", {})]
    inet = [r for r in rules if r["family"] == "inet"]
    output = [r for r in inet if r["chain"] == "output"]
    assert len(output) == 2
    assert {"match": {"op": "!=", "left": {"meta": {"key": "skuid"}}, "right": 0}} in output[1]["expr"]
    faces = sorted(e["match"]["right"] for r in inet if r["chain"] == "input" for e in r["expr"]
                   if "match" in e and e["match"]["left"] == {"meta": {"key": "iifname"}})
    assert faces == ["br-vm", "svm*"]
    assert all({"drop": None} in r["expr"] for r in inet[1:])
    assert guard_name(4789, 6) == "svmgd6-4789" and len(guard_name(65535, 6)) <= 15 and GUARD_VNI == 16777215


def test_only_frames_a_bridge_forwards_into_a_segment_device_pass_the_user_socket_rule():
    """A guest's frame keeps its tap's socket (the job user's) into the encapsulation: the bridge marks it, the output
    chain accepts the mark before the skuid drop, and clears the bit."""
    doc = ruleset(UnderlayPlan((4789,)))["nftables"]
    rules = [c["add"]["rule"] for c in doc if "rule" in c.get("add", {})]
    bridge = [r for r in rules if r["family"] == "bridge"]
    assert [r["chain"] for r in bridge] == ["forward"]
    assert bridge[0]["expr"][0] == {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "svmvx*"}}
    assert bridge[0]["expr"][1]["mangle"]["value"] == {"|": [{"meta": {"key": "mark"}}, UNDERLAY_MARK]}
    first = [r for r in rules if r["family"] == "inet" and r["chain"] == "output"][0]["expr"]
    assert {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, UNDERLAY_MARK]},
                      "right": UNDERLAY_MARK}} in first
    assert first[-2]["mangle"]["value"] == {"&": [{"meta": {"key": "mark"}}, 0xFFFFFFFF ^ UNDERLAY_MARK]}
    assert first[-1] == {"accept": None}


def test_a_held_port_fails_the_job_and_never_drains_the_node():
    from slurm_vm.errors import is_users_fault
    from slurm_vm.networks.underlay import PortHeld
    assert is_users_fault(PortHeld(held_message(4789, [])))
