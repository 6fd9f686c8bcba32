"""Underlay addresses of a job's nodes for unicast VXLAN: the admin's map first, then Slurm's NodeAddr."""

from __future__ import annotations

import pytest

from slurm_vm.errors import NodeError
from slurm_vm.node.underlay import node_underlay


def test_map_first_then_slurm_then_dns():
    asked = []

    def lookup(missing):
        asked.append(missing)
        return {"n2": "10.0.0.2", "n3": "10.0.0.3"}
    out = node_underlay(("n1", "n2", "n3"), {"n1": "10.0.0.1"}, lookup)
    assert asked == [("n2", "n3")]
    assert out == {"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "10.0.0.3"}
    assert node_underlay(("n4",), {}, lambda m: {"n4": "localhost"})["n4"] in ("127.0.0.1", "::1")


def test_ipv6_addresses_are_normalised():
    out = node_underlay(("a", "b"), {"a": "FD00:0::1", "b": "fd00::2"}, lambda m: {})
    assert out == {"a": "fd00::1", "b": "fd00::2"}


def test_a_node_without_address_and_mixed_families_are_refused():
    with pytest.raises(NodeError, match="no underlay address for node n2"):
        node_underlay(("n1", "n2"), {"n1": "10.0.0.1"}, lambda m: {})
    with pytest.raises(NodeError, match="IPv4 and IPv6"):
        node_underlay(("n1", "n2"), {"n1": "10.0.0.1", "n2": "fd00::2"}, lambda m: {})
    with pytest.raises(NodeError, match="cannot resolve"):
        node_underlay(("n1",), {}, lambda m: {"n1": "no-such-host.invalid"})
