"""Executors: create and delete a job's network devices over netlink, in the caller's network namespace.

Taps are persistent, owned by the job's uid/gid (vnet_hdr, no_pi), up, and enslaved to a bridge.
Macvtaps sit on a parent interface; their character device is made where the caller says (the
job dir), owned by the job's user. VXLAN segments (a VXLAN device on a bridge) are reference-counted
in files under a root-only directory, under an exclusive flock, so concurrent prologs agree.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
from typing import Iterator

from ..errors import NodeError, NodeNotReady
from .names import multicast_group, parse_owned_name, vxlan_bridge_name, vxlan_device_name

SEGMENT_LOCK_TIMEOUT = 30.0


def _pyroute2_package() -> None:
    """Register pyroute2 as a bare package so that importing its submodules does not run
    pyroute2/__init__.py, which imports NDB, IPDB and conntrack: ~100 ms every hook would pay for nothing."""
    if "pyroute2" not in sys.modules:
        import importlib.util   # here, like subprocess below: taps (the hooks' hot path) need neither
        import types
        spec = importlib.util.find_spec("pyroute2")
        if spec is None or spec.submodule_search_locations is None:
            raise NodeError("pyroute2 is not installed")
        package = types.ModuleType("pyroute2")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["pyroute2"] = package


def _iproute_class():
    _pyroute2_package()
    from pyroute2.iproute.linux import IPRoute
    return IPRoute


@contextlib.contextmanager
def _ipr() -> Iterator[object]:
    ipr = _iproute_class()()
    try:
        yield ipr
    finally:
        ipr.close()


def _netlink_error():
    _pyroute2_package()
    from pyroute2.netlink.exceptions import NetlinkError
    return NetlinkError


def _index(ipr, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _require(ipr, name: str, what: str) -> int:
    index = _index(ipr, name)
    if index is None:
        raise NodeError(f"{what} {name!r} does not exist on this node; ask the admins to create it")
    return index


def _require_admins(ipr, name: str, what: str) -> int:
    """An interface the admins provide (a bridge, a parent): missing, it fails the job, not the node."""
    index = _index(ipr, name)
    if index is None:
        raise NodeNotReady(f"{what} {name!r} does not exist on node {socket.gethostname()}: admins create it on "
                           "every VM node (`slurm-vm node check` lists what a node lacks)")
    return index


def create_tap(name: str, uid: int, gid: int, bridge: str | None = None, mtu: int | None = None) -> None:
    """A persistent tap owned by uid/gid, up, in `bridge` if given. Replaces a stale one of the same name."""
    NetlinkError = _netlink_error()
    with _ipr() as ipr:
        master = _require_admins(ipr, bridge, "bridge") if bridge else None
        stale = _index(ipr, name)
        if stale is not None:
            ipr.link("del", index=stale)
        try:
            ipr.link("add", ifname=name, kind="tuntap", mode="tap", uid=uid, gid=gid,
                     ifr={"no_pi": True, "vnet_hdr": True})
            index = _require(ipr, name, "tap")
            settings: dict = {"state": "up"}
            if master is not None:
                settings["master"] = master
            if mtu is not None:
                settings["mtu"] = mtu
            ipr.link("set", index=index, **settings)
        except NetlinkError as exc:
            raise NodeError(f"cannot create tap {name}: {exc.args[-1] if exc.args else exc}") from None


def delete_link(name: str) -> None:
    """Delete a link by name; a missing link is fine."""
    NetlinkError = _netlink_error()
    with _ipr() as ipr:
        index = _index(ipr, name)
        if index is None:
            return
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise NodeError(f"cannot delete link {name}: {exc}") from None


def list_owned_links() -> list[tuple[str, int, int]]:
    """(name, job id, NIC index) of every link named by names.nic_name in this namespace."""
    out = []
    with _ipr() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            owned = parse_owned_name(name or "")
            if owned:
                out.append((name, owned[0], owned[1]))
    return out


def node_identities():
    """This node's own identities (networks/identities.py): every address, and the MAC of every interface that is not
    a VM port (svm<job>n<i>: a macvtap carries its VM's MAC)."""
    from .identities import NodeIdentities
    with _ipr() as ipr:
        addresses = frozenset(str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr() if a.get_attr("IFA_ADDRESS"))
        macs = {}
        for link in ipr.get_links():
            name, mac = link.get_attr("IFLA_IFNAME") or "", (link.get_attr("IFLA_ADDRESS") or "").lower()
            if mac and mac != "00:00:00:00:00:00" and parse_owned_name(name) is None:
                macs.setdefault(mac, name)
    return NodeIdentities(addresses, macs)


# --- macvtap -----------------------------------------------------------------------------------------

def create_macvtap(name: str, parent: str, mac: str, mode: str, uid: int, gid: int, device_path: str) -> str:
    """A macvtap on `parent`, up, and its character device at `device_path`: root's, opened by `uid` through an
    ACL entry (see devnode.py; `gid` is not used). The directory must be root's."""
    NetlinkError = _netlink_error()
    with _ipr() as ipr:
        parent_index = _require_admins(ipr, parent, "parent interface")
        stale = _index(ipr, name)
        if stale is not None:
            ipr.link("del", index=stale)
        try:
            ipr.link("add", ifname=name, kind="macvtap", link=parent_index, macvtap_mode=mode, address=mac)
            index = _require(ipr, name, "macvtap")
            ipr.link("set", index=index, state="up")
        except NetlinkError as exc:
            raise NodeError(f"cannot create macvtap {name} on {parent}: {exc.args[-1] if exc.args else exc}") from None
    from .devnode import make_device_node
    major, minor = macvtap_device_numbers(name, index)
    make_device_node(device_path, os.makedev(major, minor), uid)
    return device_path


def macvtap_device_numbers(name: str, index: int) -> tuple[int, int]:
    """major:minor of a macvtap's char device, from sysfs. /sys shows the namespace it was mounted in, so
    inside another network namespace a private sysfs mount is read instead."""
    rel = f"class/net/{name}/macvtap/tap{index}/dev"
    try:
        with open(f"/sys/{rel}") as fh:
            text = fh.read()
    except FileNotFoundError:
        import subprocess
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'd=$(mktemp -d) && mount -t sysfs sysfs "$d" && cat "$d/$1"; rc=$?; umount "$d"; rmdir "$d"; exit $rc',
             "sh", rel], capture_output=True, text=True, timeout=10, check=False)
        if proc.returncode != 0:
            raise NodeError(f"cannot find the character device of macvtap {name}: {proc.stderr.strip()}")
        text = proc.stdout
    major, minor = text.strip().split(":")
    return int(major), int(minor)


# --- VXLAN segments ----------------------------------------------------------------------------------

def _segment_file(locks_dir: str, vni: int) -> str:
    return os.path.join(locks_dir, f"vxlan-{vni}.json")


@contextlib.contextmanager
def _segment_lock(locks_dir: str, vni: int, timeout: float = SEGMENT_LOCK_TIMEOUT) -> Iterator[None]:
    from ..flocks import lock_within
    os.makedirs(locks_dir, mode=0o700, exist_ok=True)
    fd = lock_within(os.path.join(locks_dir, f"vxlan-{vni}.lock"), timeout, lambda: NodeError(
        f"VXLAN segment {vni}: its lock was held for more than {timeout:.0f}s (a stuck prolog or epilog on this "
        "node?)"), poll=0.01)
    try:
        yield
    finally:
        os.close(fd)


def _read_segment(locks_dir: str, vni: int) -> dict:
    try:
        with open(_segment_file(locks_dir, vni)) as fh:
            data = json.load(fh)
        return {"jobs": sorted(int(j) for j in data.get("jobs", [])), "private": bool(data.get("private"))}
    except (FileNotFoundError, ValueError, TypeError):
        return {"jobs": [], "private": False}


def _write_segment(locks_dir: str, vni: int, data: dict) -> None:
    path = _segment_file(locks_dir, vni)
    if not data["jobs"]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def segment_jobs(locks_dir: str, vni: int) -> list[int]:
    return _read_segment(locks_dir, vni)["jobs"]


def ensure_vxlan_segment(vni: int, job_id: int, parent: str, locks_dir: str, port: int = 4789,
                         mtu: int | None = None, private: bool = False, unicast=None) -> str:
    """Join `job_id` to segment `vni`, creating its VXLAN device and bridge on first use. Returns the bridge.

    VTEPs find each other through the multicast group names.multicast_group(vni) on `parent`.
    A private (job-private) segment refuses a second job: their ids collided in the VNI range.
    """
    bridge, device = vxlan_bridge_name(vni), vxlan_device_name(vni)
    with _segment_lock(locks_dir, vni):
        data = _read_segment(locks_dir, vni)
        others = [j for j in data["jobs"] if j != job_id]
        if others and (private or data["private"]):
            raise NodeError(f"VXLAN segment {vni} is job {others[0]}'s private segment; the job ids collide in "
                            "the network's vni_range: requeue the job or widen the range")
        if not data["jobs"]:
            _delete_segment(vni)   # devices of a segment nobody holds are stale: made anew
        with _ipr() as ipr:
            if _index(ipr, bridge) is None or _index(ipr, device) is None:
                _create_segment(ipr, vni, bridge, device, parent, port, mtu, unicast)
        data["jobs"] = sorted(set(data["jobs"]) | {job_id})
        data["private"] = private
        _write_segment(locks_dir, vni, data)
    return bridge


def _create_segment(ipr, vni: int, bridge: str, device: str, parent: str, port: int, mtu: int | None,
                    unicast=None) -> None:
    """`unicast` (a unicast.Unicast): no group, learning off, FDB entries to the job's other nodes, and
    the VTEP filter; else the VNI's multicast group with learning."""
    from . import unicast as uc
    NetlinkError = _netlink_error()
    parent_index = _require_admins(ipr, parent, "VXLAN parent interface")
    try:
        if _index(ipr, bridge) is None:
            ipr.link("add", ifname=bridge, kind="bridge")
        if _index(ipr, device) is None and unicast is not None:
            uc.apply_vtep_filter(vni, port, unicast.peers)
            ipr.link("add", ifname=device, kind="vxlan", **uc.vxlan_link_args(vni, parent_index, port, unicast))
            uc.add_peer_entries(ipr, _require(ipr, device, "VXLAN device"), unicast.peers)
        elif _index(ipr, device) is None:
            ipr.link("add", ifname=device, kind="vxlan", vxlan_id=vni, vxlan_link=parent_index,
                     vxlan_group=multicast_group(vni), vxlan_port=port, vxlan_learning=1)
        bridge_index, device_index = _index(ipr, bridge), _index(ipr, device)
        extra = {"mtu": mtu} if mtu else {}
        ipr.link("set", index=device_index, master=bridge_index, state="up", **extra)
        ipr.link("set", index=bridge_index, state="up", **extra)
    except NetlinkError as exc:
        raise NodeError(f"cannot create VXLAN segment {vni} on {parent}: {exc.args[-1] if exc.args else exc}") \
            from None


def release_vxlan_segment(vni: int, job_id: int, locks_dir: str) -> None:
    """Drop `job_id` from segment `vni`; the last job out deletes the VXLAN device and bridge. Idempotent."""
    with _segment_lock(locks_dir, vni):
        data = _read_segment(locks_dir, vni)
        data["jobs"] = [j for j in data["jobs"] if j != job_id]
        if not data["jobs"]:
            _delete_segment(vni)
        _write_segment(locks_dir, vni, data)


def _delete_segment(vni: int) -> None:
    """The segment's VXLAN device (and with it its FDB entries), bridge and VTEP filter. Idempotent."""
    from .unicast import delete_vtep_filter
    delete_link(vxlan_device_name(vni))
    delete_link(vxlan_bridge_name(vni))
    delete_vtep_filter(vni)


def _segment_vnis(locks_dir: str) -> list[int]:
    """VNIs that have a reference record (vxlan-<vni>.json) in the locks dir."""
    try:
        names = os.listdir(locks_dir)
    except FileNotFoundError:
        return []
    stems = [n[len("vxlan-"):-len(".json")] for n in names if n.startswith("vxlan-") and n.endswith(".json")]
    return [int(stem) for stem in stems if stem.isdigit()]


def segment_holders(locks_dir: str) -> list[tuple[int, int]]:
    """(vni, job id) of every job a segment's reference record names (for sweeps and node doctor)."""
    return [(vni, job) for vni in _segment_vnis(locks_dir) for job in segment_jobs(locks_dir, vni)]


def orphan_segments(locks_dir: str) -> list[tuple[int, list[str]]]:
    """Segments on this node that no reference record holds (a crash between record and devices, or an
    admin's hand): (VNI, the FDB peers its VXLAN device still sends to). Their VTEP filters count too."""
    from .unicast import TABLE_PREFIX, list_vtep_tables, peer_entries
    held = {vni for vni, _ in segment_holders(locks_dir)}
    with _ipr() as ipr:
        names = {link.get_attr("IFLA_IFNAME") or "" for link in ipr.get_links()}
        vnis = {int(n[5:]) for n in names if n[:5] in ("svmvx", "svmbr") and n[5:].isdigit()}
        vnis |= {int(t[len(TABLE_PREFIX):]) for t in list_vtep_tables()}
        return [(vni, peer_entries(ipr, vni)) for vni in sorted(vnis - held)]


def delete_orphan_segment(vni: int, locks_dir: str) -> None:
    """Delete a segment's devices and filter if, under its lock, still no job holds it."""
    with _segment_lock(locks_dir, vni):
        if not _read_segment(locks_dir, vni)["jobs"]:
            _delete_segment(vni)
