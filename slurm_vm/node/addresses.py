"""Addresses slurm-vm gives VMs on networks that have a `subnet` (pure)."""

from __future__ import annotations

import ipaddress

from ..config import Config
from ..spec import VMSpec


def auto_address(subnet: str, vm_index: int) -> str:
    """VM i of a multi-VM job gets host i+1 of the network's subnet."""
    network = ipaddress.ip_network(subnet)
    return f"{network.network_address + vm_index + 1}/{network.prefixlen}"


def plan_addresses(spec: VMSpec, config: Config, vm_index: int) -> tuple[str | None, ...]:
    out = []
    for ref in spec.networks:
        net = config.networks[ref.network]
        private = net.subnet if net.vni_range is not None else None
        out.append(ref.address or (auto_address(private, vm_index) if private else None))
    return tuple(out)


def hosts_entries(spec: VMSpec, config: Config) -> list[tuple[str, str]]:
    """(address, hostname) of every VM of the job, on the first NIC that has slurm-vm-given addresses."""
    for ref in spec.networks:
        net = config.networks[ref.network]
        subnet = net.subnet if net.vni_range is not None else None
        if subnet and not ref.address:
            return [(auto_address(subnet, i).split("/")[0], spec.hostname(i)) for i in range(spec.count)]
    return []
