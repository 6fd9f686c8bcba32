"""Address plans of networks with a subnet (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slurm_vm.networks.addresses import AddressError, host_count, private_plan, shared_plan


def test_private_plan_gives_vm_i_host_i_plus_1():
    plan = private_plan("192.168.77.0/24", "fd00:77::/64")
    assert (plan.first, plan.last, plan.size) == (1, 254, 254)
    assert plan.address(1) == "192.168.77.1/24"
    assert plan.address6(1) == "fd00:77::1/64"


def test_shared_plan_default_skips_the_first_host():
    plan = shared_plan("10.0.0.0/29", None)
    assert (plan.first, plan.last) == (2, 6)
    assert plan.range_text() == "10.0.0.2-10.0.0.6"
    assert plan.address6(3) is None


def test_shared_plan_from_range():
    plan = shared_plan("10.0.0.0/24", ("10.0.0.100", "10.0.0.199"))
    assert (plan.first, plan.last, plan.size) == (100, 199, 100)
    assert plan.in_range(plan.offset_of("10.0.0.150/24"))
    assert not plan.in_range(plan.offset_of("10.0.0.99"))


@pytest.mark.parametrize("address", ["10.0.1.5", "10.0.0.0", "10.0.0.255", "nonsense", "fd00::1"])
def test_offset_of_refuses_what_is_not_a_host_of_the_subnet(address):
    with pytest.raises(AddressError):
        shared_plan("10.0.0.0/24", None).offset_of(address)


def test_empty_or_foreign_range_is_refused():
    with pytest.raises(AddressError, match="empty"):
        shared_plan("10.0.0.0/24", ("10.0.0.9", "10.0.0.3"))
    with pytest.raises(AddressError, match="not a host address"):
        shared_plan("10.0.0.0/24", ("10.0.0.9", "10.0.1.3"))


@given(st.integers(16, 30), st.data())
def test_offsets_round_trip(prefix, data):
    subnet = f"10.64.0.0/{prefix}"
    offset = data.draw(st.integers(1, host_count(subnet)))
    plan = private_plan(subnet, "fd00::/64")
    assert plan.offset_of(plan.address(offset)) == offset
    assert plan.address6(offset).endswith("/64")
