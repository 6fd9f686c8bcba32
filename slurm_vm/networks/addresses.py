"""Address plans of networks with a `subnet` (pure functions).

A VM's address is named by its *host offset* in the network's IPv4 subnet: offset 5 of 10.0.0.0/24 is
10.0.0.5. Where the network also has an IPv6 `subnet6`, the VM gets the same offset there, so one
allocation gives both families and nothing has to be agreed twice.

- Job-private segments (`vni_range`): the subnet is the job's own; VM i gets offset i+1.
- Shared networks: slurm-vm hands out offsets from the admin's `address_range` (default: every host
  address but the first, which is usually the router); static addresses in specs must lie outside it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..errors import SlurmVmError


class AddressError(SlurmVmError):
    """An address that does not fit the network's address plan."""


@dataclass(frozen=True)
class AddressPlan:
    subnet: str                     # IPv4 network, e.g. 10.0.0.0/24
    first: int                      # host offsets slurm-vm hands out: first..last inclusive
    last: int
    subnet6: str | None = None

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def address(self, offset: int) -> str:
        """`a.b.c.d/prefix` of a host offset."""
        net = self.network
        return f"{net.network_address + offset}/{net.prefixlen}"

    def address6(self, offset: int) -> str | None:
        if self.subnet6 is None:
            return None
        net = ipaddress.IPv6Network(self.subnet6)
        return f"{net.network_address + offset}/{net.prefixlen}"

    def offset_of(self, address: str) -> int:
        """Host offset of `a.b.c.d` or `a.b.c.d/prefix`; AddressError outside the subnet's host addresses."""
        net = self.network
        try:
            ip = ipaddress.IPv4Address(address.split("/")[0])
        except ValueError:
            raise AddressError(f"{address!r} is not an IPv4 address") from None
        if ip not in net or ip in (net.network_address, net.broadcast_address):
            raise AddressError(f"{address} is not a host address of the network's subnet {self.subnet}")
        return int(ip) - int(net.network_address)

    def in_range(self, offset: int) -> bool:
        return self.first <= offset <= self.last

    def range_text(self) -> str:
        return f"{self.address(self.first).split('/')[0]}-{self.address(self.last).split('/')[0]}"


def host_count(subnet: str) -> int:
    """Usable host addresses of an IPv4 subnet (no network and broadcast address)."""
    return ipaddress.IPv4Network(subnet).num_addresses - 2


def private_plan(subnet: str, subnet6: str | None = None) -> AddressPlan:
    """A job-private segment: every host address is the job's; VM i gets offset i+1."""
    return AddressPlan(subnet=subnet, first=1, last=host_count(subnet), subnet6=subnet6)


def shared_plan(subnet: str, address_range: tuple[str, str] | None, subnet6: str | None = None) -> AddressPlan:
    """A shared network: slurm-vm hands out `address_range` (default: host 2 to the last host)."""
    if address_range is None:
        return AddressPlan(subnet=subnet, first=2, last=host_count(subnet), subnet6=subnet6)
    probe = AddressPlan(subnet=subnet, first=1, last=host_count(subnet), subnet6=subnet6)
    first, last = (probe.offset_of(a) for a in address_range)
    if first > last:
        raise AddressError(f"address_range {address_range[0]}..{address_range[1]} is empty: give [first, last]")
    return AddressPlan(subnet=subnet, first=first, last=last, subnet6=subnet6)


def check_subnet6(text: str) -> str:
    """An IPv6 network /64 to /120 without host bits; AddressError otherwise."""
    try:
        net = ipaddress.IPv6Network(text, strict=True)
    except ValueError as exc:
        raise AddressError(f"{text!r} is not an IPv6 network such as fd00:77::/64 ({exc})") from None
    if not 64 <= net.prefixlen <= 120:
        raise AddressError(f"{text}: use a prefix length from /64 to /120")
    return str(net)


def check_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise AddressError(f"{text!r} is not an IPv4 or IPv6 address") from None


def network_address_plan(net) -> AddressPlan:
    """The address plan of a config Network that has a `subnet` (duck-typed: no import of the config layer)."""
    if net.vni_range is not None:
        return private_plan(net.subnet, net.subnet6)
    return shared_plan(net.subnet, tuple(net.address_range) if net.address_range else None, net.subnet6)
