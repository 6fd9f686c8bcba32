"""Addresses slurm-vm gives VMs on networks that have a `subnet` (pure).

A VM's address is a host offset of the network's subnet (networks/addresses.py): on a job-private
segment VM i has offset i+1; on a shared network the offsets are the ones the job agreed cluster-wide
(its Holding, node/allocate.py); a static `address` keeps its own. `subnet6` gives the same offset in IPv6.
"""

from __future__ import annotations

from ..config import Config
from ..errors import NodeError
from ..networks.addresses import network_address_plan
from ..networks.allocation import Holding
from ..spec import VMSpec


def _offset(spec: VMSpec, config: Config, nic: int, vm_index: int, holding: Holding | None) -> int | None:
    ref = spec.networks[nic]
    net = config.networks[ref.network]
    if net.subnet is None:
        return None
    if ref.address:
        return network_address_plan(net).offset_of(ref.address)
    if net.vni_range is not None:
        return vm_index + 1
    offsets = holding.offsets.get((ref.network, nic)) if holding is not None else None
    if not offsets or vm_index >= len(offsets):
        raise NodeError(f"no address was agreed for networks[{nic}] ({ref.network!r})")
    return offsets[vm_index]


def plan_addresses(spec: VMSpec, config: Config, vm_index: int,
                   holding: Holding | None = None) -> tuple[tuple[str, ...], ...]:
    """Each NIC's addresses (IPv4, then IPv6 where the network has `subnet6`); empty: DHCP."""
    out: list[tuple[str, ...]] = []
    for i, ref in enumerate(spec.networks):
        offset = _offset(spec, config, i, vm_index, holding)
        if offset is None:
            out.append((ref.address,) if ref.address else ())
            continue
        plan = network_address_plan(config.networks[ref.network])
        six = plan.address6(offset)
        out.append((plan.address(offset),) + ((six,) if six else ()))
    return tuple(out)


def hosts_entries(spec: VMSpec, config: Config, holding: Holding | None = None) -> list[tuple[str, str]]:
    """(address, hostname) of every VM of the job, on the first NIC that has slurm-vm-given addresses."""
    for i, ref in enumerate(spec.networks):
        net = config.networks[ref.network]
        if net.subnet and not ref.address:
            plan = network_address_plan(net)
            return [(plan.address(_offset(spec, config, i, vm, holding)).split("/")[0], spec.hostname(vm))
                    for vm in range(spec.count)]
    return []
