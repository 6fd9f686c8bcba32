"""The functional core of the prolog: spec + admin config + job context -> a NodePlan (plain data).

Nothing here touches the system; the executor (prepare.py) carries a plan out and the epilog undoes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..checkpoint.plan import checkpoint_definition, keeps_identity
from ..config import Config, is_user_image
from ..hypervisor.definition import Boot, Disk, Nic, VMDefinition
from ..errors import NodeError
from ..networks.allocation import Holding
from ..networks.names import derive_mac, nic_name, vxlan_bridge_name
from ..networks.underlay import UnderlayPlan, plan_underlay
from ..spec import VMSpec
from .addresses import hosts_entries, plan_addresses
from .cloudinit import (hosts_vendor_data, mounts_vendor_data, ready_vendor_data, render_meta_data,
                        render_network_config,
                        render_user_data)
from .context import JobContext
from .hostfacts import HostFacts, concrete_hypervisor
from ..limits import OVERLAY_FILE, SEED_FILE
from .layout import job_dir, nic_nodes_dir
from .shares import (SharePlan, definition_fields, plan_shares, share_transport,
                     user_home)



@dataclass(frozen=True)
class NicPlan:
    index: int
    ifname: str
    kind: str            # bridge | macvtap | vxlan
    mac: str
    network: str
    bridge: str | None = None
    parent: str | None = None
    mode: str = "bridge"
    vni: int | None = None
    port: int = 4789
    mtu: int | None = None
    device_path: str | None = None   # macvtap: root's char device node, the user's by ACL (networks/devnode.py)
    private: bool = False            # vxlan: a job-private segment (VNI from the network's vni_range)
    unicast_local: str | None = None         # unicast vxlan: this node's underlay address
    unicast_peers: tuple[str, ...] = ()      # unicast vxlan: the job's other nodes' underlay addresses


@dataclass(frozen=True)
class SeedPlan:
    path: str
    meta_data: str
    user_data: str
    network_config: str | None
    vendor_data: str | None


@dataclass(frozen=True)
class NodePlan:
    job_id: int
    uid: int
    gid: int
    user: str
    state_dir: str
    job_dir: str
    base_image: str
    base_format: str
    overlay: str
    disk_size: int | None
    seed: SeedPlan
    volumes: tuple[tuple[str, bool], ...]
    nics: tuple[NicPlan, ...]
    definition: VMDefinition
    qemu_img: str = "qemu-img"
    shares: tuple[SharePlan, ...] = ()
    share_allowed: tuple[str, ...] = ()
    home: str = ""
    base_size: int | None = None     # a user's image: its virtual size, inspected as the user
    port_filters: tuple = ()         # networks.portfilter.PortFilter per filtered NIC (node/portfilters.py)
    underlay: UnderlayPlan | None = None   # a VXLAN job: the node's guard devices and rules (networks/underlay.py)


def instance_id(ctx: JobContext, across_requeues: bool = False) -> str:
    restart = 0 if across_requeues else ctx.restart_count   # a restored VM keeps its identity (checkpoint)
    return f"slurm-vm-{ctx.cluster}-{ctx.job_id}-{restart}-{ctx.vm_index}"


def plan_nics(spec: VMSpec, config: Config, ctx: JobContext, jdir: str, holding: Holding | None = None,
              underlays: dict | None = None) -> tuple[NicPlan, ...]:
    nics = []
    for i, ref in enumerate(spec.networks):
        net = config.networks[ref.network]
        mac = (ref.mac or derive_mac(ctx.job_id, ctx.vm_index, i)).lower()
        ifname = nic_name(ctx.job_id, i)
        vni = net.vni
        if net.kind == "vxlan" and vni is None:
            if holding is None or ref.network not in holding.vnis:
                raise NodeError(f"no VNI was agreed for the job-private network {ref.network!r}")
            vni = holding.vnis[ref.network]
        local, peers = None, ()
        if net.kind == "vxlan" and net.vxlan_mode == "unicast":
            addrs = (underlays or {}).get(ref.network)
            if not addrs or ctx.node not in addrs:
                raise NodeError(f"no underlay addresses were resolved for the unicast network {ref.network!r}")
            local = addrs[ctx.node]
            peers = tuple(addrs[n] for n in (ctx.nodes or (ctx.node,)) if n != ctx.node)
        bridge = vxlan_bridge_name(vni) if net.kind == "vxlan" else net.bridge
        nics.append(NicPlan(index=i, ifname=ifname, kind=net.kind, mac=mac, network=ref.network, bridge=bridge,
                            parent=net.parent, mode=net.mode, vni=vni, port=net.port, mtu=net.mtu,
                            device_path=os.path.join(nic_nodes_dir(config.node_state_dir(ctx.node), ctx.job_id),
                                                     f"macvtap{i}") if net.kind == "macvtap" else None,
                            private=net.kind == "vxlan" and net.vni is None, unicast_local=local,
                            unicast_peers=peers))
    return tuple(nics)


def plan_seed(spec: VMSpec, config: Config, ctx: JobContext, nics: tuple[NicPlan, ...], jdir: str,
              holding: Holding | None, hypervisor: str) -> SeedPlan:
    hostname = spec.hostname(ctx.vm_index)
    user_data, vendor_data = render_user_data(spec.cloud_init.user_data, list(spec.cloud_init.ssh_authorized_keys),
                                              hostname)
    network_config = render_network_config(spec, nics, plan_addresses(spec, config, ctx.vm_index, holding))
    return SeedPlan(path=os.path.join(jdir, SEED_FILE), meta_data=render_meta_data(
                        instance_id(ctx, keeps_identity(spec)), hostname),
                    user_data=user_data, network_config=network_config,
                    vendor_data=ready_vendor_data(mounts_vendor_data(
                        plan_shares(spec, user_home(ctx.user)), share_transport(hypervisor, config),
                        hosts_vendor_data(hosts_entries(spec, config, holding), vendor_data))))


def plan_definition(spec: VMSpec, config: Config, ctx: JobContext, jdir: str, overlay: str, seed: str,
                    nics: tuple[NicPlan, ...], hypervisor: str) -> VMDefinition:
    """The launcher's contract (vm.json), for a concrete hypervisor. Volume formats stay `auto` until the prolog
    has probed them."""
    image = config.images[spec.image]
    disks = (Disk(overlay, "qcow2", readonly=False, role="root", backing=True),
             Disk(seed, "raw", readonly=True, role="seed"),
             *(Disk(v.path, "auto", readonly=v.readonly, role="volume") for v in spec.volumes))
    return VMDefinition(
        job_id=ctx.job_id,
        name=spec.hostname(ctx.vm_index),
        cpus=spec.cpus,
        memory_bytes=spec.memory,
        memory_overhead_bytes=config.hypervisor.memory_overhead,
        hypervisor=hypervisor,
        accelerator=config.hypervisor.accelerator,
        boot=Boot(kernel=image.kernel, initrd=image.initrd, cmdline=image.cmdline, firmware=image.firmware),
        disks=disks,
        nics=tuple(Nic(n.mac, tap=None if n.kind == "macvtap" else n.ifname, device=n.device_path) for n in nics),
        run_dir=jdir,
        grace_seconds=config.grace_seconds,
        qemu_binary=config.hypervisor.qemu_binary,
        cloud_hypervisor_binary=config.hypervisor.cloud_hypervisor_binary,
        **definition_fields(plan_shares(spec, user_home(ctx.user)), hypervisor, config),
        checkpoint=checkpoint_definition(spec, config, ctx.user, ctx.restart_count,
                                         instance_id(ctx, keeps_identity(spec)), ctx.vm_index),
    )


def make_plan(spec: VMSpec, config: Config, ctx: JobContext, holding: Holding | None = None,
              underlays: dict | None = None, facts: HostFacts | None = None,
              base_size: int | None = None) -> NodePlan:
    """`holding`: what the job agreed cluster-wide (node.allocate): its private VNIs and shared addresses;
    `underlays`: network -> node -> underlay address for unicast VXLAN networks (node.underlay);
    `facts`: what the prolog found on the node (node.hostfacts), to resolve `hypervisor: auto`."""
    hypervisor = concrete_hypervisor(spec, config, facts or HostFacts())
    if is_user_image(spec.image) and base_size is None:
        raise NodeError(f"{spec.image}: a user's image is planned only after its check as the user (prolog)")
    image = config.images[spec.image]
    state_dir = config.node_state_dir(ctx.node)
    jdir = job_dir(state_dir, ctx.job_id)
    overlay = os.path.join(jdir, OVERLAY_FILE)
    nics = plan_nics(spec, config, ctx, jdir, holding, underlays)
    seed = plan_seed(spec, config, ctx, nics, jdir, holding, hypervisor)
    from .portfilters import plan_port_filters
    port_filters = plan_port_filters(nics, plan_addresses(spec, config, ctx.vm_index, holding), config)
    return NodePlan(job_id=ctx.job_id, uid=ctx.uid, gid=ctx.gid, user=ctx.user, state_dir=state_dir,
                    job_dir=jdir, base_image=image.path, base_format=image.format,
                    overlay=overlay, disk_size=spec.disk, seed=seed,
                    volumes=tuple((v.path, v.readonly) for v in spec.volumes), nics=nics,
                    definition=plan_definition(spec, config, ctx, jdir, overlay, seed.path, nics, hypervisor),
                    qemu_img=config.hypervisor.qemu_img, shares=plan_shares(spec, user_home(ctx.user)),
                    share_allowed=tuple(config.mounts.allowed), home=user_home(ctx.user),
                    port_filters=port_filters, base_size=base_size,
                    underlay=plan_underlay(config) if any(n.kind == "vxlan" for n in nics) else None)
