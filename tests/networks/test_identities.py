"""Identities are exclusive (pure parts): static addresses held cluster-wide per L2 domain, with or without
`subnet`; the admins' `reserved` hosts, the node's own addresses and MACs, and addresses handed out on a network
sharing the wire cannot be claimed."""

from __future__ import annotations

import ipaddress

import pytest

from slurm_vm.config import parse_config
from slurm_vm.errors import UserFault, ValidationError
from slurm_vm.networks.allocation import Holding, IpNeed, IpTaken, Needs, Taken, choose, format_holding, parse_holding
from slurm_vm.networks.allocation import identity_domain
from slurm_vm.node.allocate import needs_of
from slurm_vm.networks.identities import NodeIdentities, check_node_identities
from slurm_vm.spec import parse_spec

CONFIG = """
images: {tiny: {path: /img/t.qcow2, kernel: /img/k}}
networks:
  lan: {kind: bridge, bridge: vmbr0, reserved: [10.77.0.250, 10.77.0.240/29]}
  lan-open: {kind: bridge, bridge: vmbr0, trusted: true}
  managed: {kind: bridge, bridge: vmbr0, subnet: 10.77.0.0/24, address_range: [10.77.0.100, 10.77.0.199]}
  direct: {kind: macvtap, parent: eth0}
  private: {kind: vxlan, parent: eth0, vni_range: [5000, 5999], subnet: 192.168.77.0/24}
"""


def spec(network: str, address: str | None = None, mac: str | None = None):
    config = parse_config(CONFIG, "config")
    nic = f"{{network: {network}" + (f", address: {address}" if address else "") + (f", mac: '{mac}'" if mac else "")
    return parse_spec(f"name: v\nimage: tiny\nnetworks: [{nic}}}]\n", "spec", config), config


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def test_static_addresses_are_recorded_per_wire_and_round_trip():
    s, config = spec("lan", "10.77.0.50/24")
    needs = needs_of(s, config)
    assert needs.ips == (IpNeed(0, "bvmbr0", ip("10.77.0.50")),)
    s2, _ = spec("managed", "10.77.0.50/24")
    assert needs_of(s2, config).ips == needs.ips                  # the same wire as `lan`: one holder
    holding = Holding(state="k", ips={0: ("bvmbr0", ip("10.77.0.50"))}, macs={1: 0x525400000001})
    assert parse_holding(format_holding(holding)) == holding
    assert identity_domain(config.networks["lan-open"]) is None   # trusted: anyone may be anyone
    assert identity_domain(config.networks["private"]) is None    # the job's own segment


def test_a_second_vm_with_a_held_address_on_a_network_without_subnet_is_refused():
    needs = Needs(ips=(IpNeed(0, "bvmbr0", ip("10.77.0.50")),))
    assert choose(needs, Taken(ips={("bvmbr0", ip("10.77.0.50")): 12})) == IpTaken(0, ip("10.77.0.50"), 12)
    assert isinstance(choose(needs, Taken(ips={("bother", ip("10.77.0.50")): 12})), Holding)   # another wire
    yielding = Taken(ips={("bvmbr0", ip("10.77.0.50")): 99}, yielding=frozenset({99}))
    assert isinstance(choose(needs, yielding), Holding)          # a later candidate yields


@pytest.mark.parametrize("network,address,fault", [
    ("lan", "10.77.0.250/24", "is reserved by the admins"),
    ("lan", "10.77.0.243/24", "is reserved by the admins"),
    ("managed", "10.77.0.250/24", "is reserved by the admins"),        # `lan`'s reserved host is on the same bridge
    ("lan", "10.77.0.150/24", "handed out by slurm-vm on network 'managed'"),
])
def test_validation_refuses_reserved_and_handed_out_addresses(network, address, fault):
    with pytest.raises(ValidationError) as exc:
        spec(network, address)
    assert fault in str(exc.value) and "networks.0.address" in str(exc.value).replace("[", ".").replace("]", "")


def test_trusted_networks_and_free_addresses_pass_validation():
    spec("lan-open", "10.77.0.250/24")
    spec("lan", "10.77.0.60/24")


NODE = NodeIdentities(frozenset({"10.77.0.1", "192.0.2.7"}), {"52:54:00:aa:bb:cc": "eth0"})


@pytest.mark.parametrize("network,address,mac,fault", [
    ("managed", "10.77.0.1/24", None, "networks[0].address: 10.77.0.1 is an address of the node itself"),
    ("lan", "10.77.0.1/24", None, "is an address of the node itself"),
    ("direct", None, "52:54:00:AA:BB:CC", "networks[0].mac: 52:54:00:AA:BB:CC is the MAC of this node's interface eth0"),
])
def test_the_nodes_own_address_or_mac_is_the_users_fault(network, address, mac, fault):
    s, config = spec(network, address, mac)
    with pytest.raises(UserFault) as exc:
        check_node_identities(s, config, lambda: NODE)
    assert fault in str(exc.value) and "\n" not in str(exc.value)


def test_other_claims_pass_and_no_claim_reads_nothing():
    s, config = spec("lan-open", "10.77.0.1/24")
    check_node_identities(s, config, lambda: NODE)               # trusted: the admin said anyone may be anyone
    s, config = spec("lan")
    check_node_identities(s, config, lambda: pytest.fail("read without a claim"))


def test_config_refuses_the_guard_vni_and_bad_reserved_entries():
    with pytest.raises(ValidationError) as exc:
        parse_config("images: {}\nnetworks:\n  v: {kind: vxlan, parent: eth0, vni_range: [16777000, 16777215]}\n"
                     "  b: {kind: bridge, bridge: br0, reserved: [10.0.0.300]}\n", "c")
    assert "16777215 is slurm-vm's own" in str(exc.value) and "networks.b.reserved" in str(exc.value).replace(
        "[0]", "")
