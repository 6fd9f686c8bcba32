"""Names and MACs of a job's host objects (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurm_vm.errors import NodeError
from slurm_vm.networks.names import (derive_mac, multicast_group, nic_name, parse_owned_name,
                                     vxlan_bridge_name, vxlan_device_name)

JOB = st.integers(1, 4294967295)


@given(JOB, st.integers(0, 7))
def test_nic_names_fit_ifnamsiz_and_parse_back(job, index):
    name = nic_name(job, index)
    assert len(name) <= 15
    assert parse_owned_name(name) == (job, index)


@given(JOB, st.integers(0, 2047), st.integers(0, 7))
def test_macs_are_locally_administered_unicast(job, vm, nic):
    mac = derive_mac(job, vm, nic)
    first = int(mac.split(":")[0], 16)
    assert first & 0b11 == 0b10 and mac == mac.lower()


@settings(max_examples=300)
@given(st.lists(st.tuples(JOB, st.integers(0, 2047), st.integers(0, 7)), min_size=2, max_size=50, unique=True))
def test_macs_never_collide(keys):
    assert len({derive_mac(*k) for k in keys}) == len(keys)


def test_mac_layout_is_stable():
    assert derive_mac(1, 0, 0) == "02:00:00:00:40:00"
    assert derive_mac(4294967295, 2047, 7) == "fe:ff:ff:ff:ff:ff"


@pytest.mark.parametrize("bad", ["svm", "svm12", "svmXn0", "svm1n8", "svm0n0", "eth0", "svm99999999999n0",
                                 "svmbr5", "svm1n0x"])
def test_foreign_names_are_not_ours(bad):
    assert parse_owned_name(bad) is None


def test_limits_are_enforced():
    for call in (lambda: nic_name(0, 0), lambda: nic_name(1, 8), lambda: derive_mac(1, 2048, 0),
                 lambda: vxlan_bridge_name(0), lambda: vxlan_device_name(16777216)):
        with pytest.raises(NodeError):
            call()


def test_multicast_groups_follow_the_vni():
    assert multicast_group(5000) == "239.0.19.136"
    assert len(vxlan_bridge_name(16777215)) <= 15 and len(vxlan_device_name(16777215)) <= 15
