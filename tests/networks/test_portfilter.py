"""Anti-spoofing rules as plain data: which frames each VM port may send (no root, no nft)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slurm_vm.config import parse_config
from slurm_vm.networks.portfilter import PortFilter, delete_table, parse_table_name, ruleset, table_name
from slurm_vm.networks.allocation import Holding
from slurm_vm.node.context import JobContext
from slurm_vm.node.plan import make_plan
from slurm_vm.spec import parse_spec

MAC = "02:00:00:00:40:00"


def rules_of(doc: dict) -> dict[str, list[str]]:
    """chain -> rules, each rule as compact JSON text (for readable assertions)."""
    out: dict[str, list[str]] = {}
    for cmd in doc["nftables"]:
        rule = cmd.get("add", {}).get("rule")
        if rule:
            out.setdefault(rule["chain"], []).append(json.dumps(rule["expr"], sort_keys=True))
    return out


def base_chains(doc: dict) -> list[dict]:
    return [c["add"]["chain"] for c in doc["nftables"] if "chain" in c.get("add", {}) and "hook" in c["add"]["chain"]]


def test_tap_port_with_an_address():
    doc = ruleset(42, [PortFilter("svm42n0", "ingress", MAC, ("10.0.0.5/24",))])
    [base] = base_chains(doc)
    assert base == {"family": "netdev", "table": "svm_42", "name": "p0", "type": "filter", "hook": "ingress",
                    "dev": "svm42n0", "prio": -500, "policy": "drop"}
    rules = rules_of(doc)
    assert MAC in rules["p0"][0] and '"!="' in rules["p0"][0] and "drop" in rules["p0"][0]
    vmap = json.loads(rules["p0"][1])[0]["vmap"]
    assert [k for k, _ in vmap["data"]["set"]] == ["arp", "ip", "ip6"]   # anything else: policy drop
    assert any('"saddr ip"' in r and '"0.0.0.0"' in r and '"10.0.0.5"' in r for r in rules["p0_arp"])
    assert any('"saddr ether"' in r and MAC in r for r in rules["p0_arp"])
    assert any('"ip"' in r and '"saddr"' in r and '"10.0.0.5"' in r and '"!="' in r for r in rules["p0_ip4"])
    assert any('"sport"' in r and "67" in r for r in rules["p0_ip4"])
    assert any('"sport"' in r and "547" in r for r in rules["p0_ip6"])
    assert any("nd-router-advert" in r for r in rules["p0_ip6"])
    assert any('"fe80::"' in r and '"ip6"' in r for r in rules["p0_ip6"])
    for chain in ("p0_arp", "p0_ip4", "p0_ip6"):
        assert rules[chain][-1] == '[{"accept": null}]'


def test_without_managed_addresses_only_the_mac_and_server_roles_are_held():
    rules = rules_of(ruleset(42, [PortFilter("svm42n0", "ingress", MAC, None)]))
    everything = " ".join(r for chain in rules.values() for r in chain)
    assert '"saddr ip"' not in everything and '"fe80::"' not in everything
    assert '"saddr ether"' in everything and "nd-router-advert" in everything and "67" in everything


def test_admin_flags_let_servers_through():
    rules = rules_of(ruleset(42, [PortFilter("svm42n0", "ingress", MAC, ("10.0.0.5",), allow_dhcp_server=True,
                                             allow_router_advertisements=True)]))
    everything = " ".join(r for chain in rules.values() for r in chain)
    assert '"sport"' not in everything and "nd-router-advert" not in everything
    assert '"10.0.0.5"' in everything


def test_ipv6_addresses_are_allowed_and_an_ipv6_only_port_sends_no_ipv4():
    rules = rules_of(ruleset(1, [PortFilter("svm1n0", "ingress", MAC, ("fd00::5/64",))]))
    assert any('"fd00::5"' in r for r in rules["p0_ip6"])
    assert rules["p0_ip4"][-2] == '[{"drop": null}]'


def test_macvtap_ports_filter_on_egress_and_ports_get_their_own_chains():
    doc = ruleset(7, [PortFilter("svm7n0", "ingress", MAC, None), PortFilter("svm7n1", "egress", MAC, None)])
    assert [(c["name"], c["hook"], c["dev"]) for c in base_chains(doc)] == [("p0", "ingress", "svm7n0"),
                                                                           ("p1", "egress", "svm7n1")]


def test_the_ruleset_replaces_a_stale_table_atomically():
    cmds = ruleset(5, [PortFilter("svm5n0", "ingress", MAC, None)])["nftables"]
    assert [list(c) for c in cmds[:3]] == [["add"], ["delete"], ["add"]]
    assert all("table" in c[k] for c in cmds[:3] for k in c)
    assert delete_table(5)["nftables"][1] == {"delete": {"table": {"family": "netdev", "name": "svm_5"}}}


def test_bad_hook_is_refused():
    with pytest.raises(ValueError):
        PortFilter("svm1n0", "forward", MAC, None)


@given(st.integers(1, 4294967295))
def test_table_names_parse_back(job):
    assert parse_table_name(table_name(job)) == job


@pytest.mark.parametrize("name", ["svm_", "svm_0", "svm_01", "svm_x", "filter", "svm_99999999999", "svm_5n"])
def test_foreign_tables_are_not_ours(name):
    assert parse_table_name(name) is None


CONFIG = """
images: {deb: {path: /img/deb.qcow2, kernel: /img/vmlinux}}
networks:
  lan: {kind: bridge, bridge: br0}
  lab: {kind: bridge, bridge: br1, trusted: true}
  fabric: {kind: macvtap, parent: eth1, allow_dhcp_server: true}
  private: {kind: vxlan, parent: eth0, vni_range: [1000, 1999], subnet: 192.168.50.0/24,
            allow_router_advertisements: true}
"""


def test_the_plan_filters_untrusted_ports_with_the_addresses_slurm_vm_gives():
    config = parse_config(CONFIG, "config")
    spec = parse_spec("""name: web
image: deb
count: 2
networks: [{network: lan}, {network: lab}, {network: fabric}, {network: private}]
""", "spec", config)
    ctx = JobContext(job_id=77, uid=4201, gid=4201, user="u", node="n2", nodes=("n1", "n2"), cluster="c", comment="")
    plan = make_plan(spec, config, ctx, Holding(vnis={"private": 1077}))
    by_device = {p.device: p for p in plan.port_filters}
    assert sorted(by_device) == ["svm77n0", "svm77n2", "svm77n3"]           # lab is trusted
    assert by_device["svm77n0"].addresses is None and by_device["svm77n0"].hook == "ingress"
    assert by_device["svm77n2"].hook == "egress" and by_device["svm77n2"].allow_dhcp_server
    private = by_device["svm77n3"]
    assert private.addresses == ("192.168.50.2/24",) and private.allow_router_advertisements
    assert private.mac == plan.nics[3].mac


def test_a_static_address_is_the_only_source_allowed():
    config = parse_config(CONFIG, "config")
    spec = parse_spec("name: web\nimage: deb\nnetworks: [{network: lan, address: 10.1.2.3/24}]\n", "spec", config)
    ctx = JobContext(job_id=9, uid=1, gid=1, user="u", node="n1", nodes=("n1",), cluster="c", comment="")
    [port] = make_plan(spec, config, ctx).port_filters
    assert port.ipv4 == ["10.1.2.3"] and port.ipv6 == []
