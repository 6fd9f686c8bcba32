"""Underlay addresses of a job's nodes, for unicast VXLAN: the admin's map, else Slurm's NodeAddr (DNS)."""

from __future__ import annotations

import ipaddress
import socket

from ..errors import NodeError


def _literal(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _resolve(name: str) -> str:
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise NodeError(f"cannot resolve node address {name!r} for unicast VXLAN: {exc}; give the network "
                        "`underlay_addresses`") from None
    return str(ipaddress.ip_address(infos[0][4][0]))


def node_underlay(nodes: tuple[str, ...], given: dict[str, str], lookup) -> dict[str, str]:
    """node -> underlay address; `lookup(missing nodes)` gives Slurm's NodeAddr of the others."""
    out = {n: str(ipaddress.ip_address(given[n])) for n in nodes if n in given}
    missing = tuple(n for n in nodes if n not in out)
    if missing:
        found = lookup(missing)
        for node in missing:
            addr = found.get(node)
            if not addr:
                raise NodeError(f"no underlay address for node {node}: add it to the network's "
                                "`underlay_addresses` or set its NodeAddr in slurm.conf")
            out[node] = _literal(addr) or _resolve(addr)
    families = {ipaddress.ip_address(a).version for a in out.values()}
    if len(families) > 1:
        raise NodeError(f"the job's nodes have IPv4 and IPv6 underlay addresses ({out}); use one family")
    return out


def resolve_underlays(spec, config, ctx) -> dict[str, dict[str, str]]:
    """network -> node -> underlay address, for the spec's unicast VXLAN networks."""
    out: dict[str, dict[str, str]] = {}
    nodes = ctx.nodes or (ctx.node,)
    for ref in spec.networks:
        net = config.networks[ref.network]
        if net.kind != "vxlan" or net.vxlan_mode != "unicast" or ref.network in out:
            continue

        def lookup(missing: tuple[str, ...]) -> dict[str, str]:
            from ..slurm.cli import CliBackend, node_addresses
            return node_addresses(CliBackend(config.slurm.command_timeout, config.slurm.bin_dir), missing)
        out[ref.network] = node_underlay(nodes, dict(net.underlay_addresses), lookup)
    return out
