"""The system calls behind a node's host objects, behind one small interface.

HostSystem is the real thing (files through fd-based helpers, netlink through pyroute2, qemu-img).
Host objects (objects.py) only talk to a System, so prepare and teardown can be unit-tested against
a fake one without root; the root tests run HostSystem.
"""

from __future__ import annotations

import os
import time
from typing import Protocol

from ..disks.overlay import create_overlay
from ..disks.shares import check_share_as_user
from ..disks.safefs import make_private_dir, remove_tree_safely, write_file_atomic
from ..disks.volumes import VolumeInfo, VolumeReservations, check_volume_as_user
from ..errors import NodeError, ShareError
from ..networks import links
from ..networks.portfilter import PortFilter
from ..networks.underlay import UnderlayPlan


class System(Protocol):
    # files
    def make_private_dir(self, path: str) -> None: ...
    def write_private_file(self, path: str, data: bytes) -> None: ...
    def create_overlay(self, base: str, base_format: str, overlay: str, size: int | None, qemu_img: str,
                       base_size: int | None = None) -> None: ...
    def remove_tree(self, path: str) -> None: ...
    def remove_job_dir(self, path: str, trash: str, seconds: float) -> bool: ...
    def empty_trash(self, trash: str, seconds: float) -> list[str]: ...
    def give_dir_to_user(self, path: str, uid: int, gid: int) -> None: ...
    def list_dir(self, path: str) -> list[str]: ...
    # network devices
    def create_tap(self, name: str, uid: int, gid: int, bridge: str | None, mtu: int | None) -> None: ...
    def create_macvtap(self, name: str, parent: str, mac: str, mode: str, uid: int, gid: int,
                       device_path: str) -> None: ...
    def delete_link(self, name: str) -> None: ...
    def owned_links(self) -> list[tuple[str, int, int]]: ...
    def make_root_dir(self, path: str) -> None: ...
    def remove_device_nodes(self, path: str) -> None: ...
    # anti-spoofing rules (nftables table per job)
    def apply_port_filters(self, job_id: int, ports: tuple[PortFilter, ...]) -> None: ...
    def delete_port_filters(self, job_id: int) -> None: ...
    def port_filter_tables(self) -> list[tuple[str, int]]: ...
    # the VXLAN underlay's guard devices and rules (permanent, root's: networks/underlay.py)
    def ensure_underlay(self, plan: UnderlayPlan) -> None: ...
    def underlay_problems(self, plan: UnderlayPlan) -> list[str]: ...
    # VXLAN segment references (root-only files under the locks dir)
    def join_segment(self, vni: int, job_id: int, parent: str, locks: str, port: int, mtu: int | None,
                     private: bool, unicast_local: str | None = None, unicast_peers: tuple[str, ...] = ()) -> str: ...
    def leave_segment(self, vni: int, job_id: int, locks: str) -> None: ...
    def segment_holders(self, locks: str) -> list[tuple[int, int]]: ...
    def orphan_segments(self, locks: str) -> list[tuple[int, list[str]]]: ...
    def delete_orphan_segment(self, vni: int, locks: str) -> None: ...
    # persistent volumes: probed with the job user's own rights, then reserved on the node
    def check_volume(self, path: str, user: str, uid: int, gid: int, readonly: bool) -> VolumeInfo: ...
    def reserve_volume(self, locks: str, info: VolumeInfo, job_id: int) -> None: ...
    # shared host directories: resolved with the job user's own rights
    def check_share(self, source: str, allowed: tuple[str, ...], home: str, user: str, uid: int, gid: int,
                    readonly: bool, field: str) -> str: ...
    def release_volumes(self, locks: str, job_id: int) -> None: ...
    def volume_holders(self, locks: str) -> list[tuple[str, int]]: ...


class HostSystem:
    """The real node (pyroute2 itself is imported by networks.links on first use: it is heavy)."""

    def make_private_dir(self, path: str) -> None:
        # Root-owned until handover: root never writes into a directory the user can already change.
        make_private_dir(path, 0, 0, 0o700)

    def write_private_file(self, path: str, data: bytes) -> None:
        dir_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            write_file_atomic(dir_fd, os.path.basename(path), data, 0, 0, 0o600)
        finally:
            os.close(dir_fd)

    def create_overlay(self, base: str, base_format: str, overlay: str, size: int | None, qemu_img: str,
                       base_size: int | None = None) -> None:
        create_overlay(base, base_format, overlay, size, 0, 0, qemu_img, base_size=base_size)

    def remove_tree(self, path: str) -> None:
        remove_tree_safely(path)

    def remove_job_dir(self, path: str, trash: str, seconds: float) -> bool:
        """Move the (user's) job dir into the root-only trash in one rename, then remove it within `seconds`;
        False: what is left stays in the trash for the next hook (a user can make a tree of any size)."""
        try:
            os.lstat(path)
        except FileNotFoundError:
            return True
        if not os.path.isdir(trash):
            remove_tree_safely(path)   # a state dir of an older slurm-vm, before `trash` existed
            return True
        parked = os.path.join(trash, f"{os.path.basename(path)}.{os.urandom(4).hex()}")
        os.rename(path, parked)
        return remove_tree_safely(parked, time.monotonic() + seconds)

    def empty_trash(self, trash: str, seconds: float) -> list[str]:
        """Remove what earlier hooks left in the trash, within `seconds`; the entries still there."""
        deadline = time.monotonic() + seconds
        for name in self.list_dir(trash):
            if not remove_tree_safely(os.path.join(trash, name), deadline):
                break
        return self.list_dir(trash)

    def give_dir_to_user(self, path: str, uid: int, gid: int) -> None:
        """chown a directory and its entries (not deeper) without following links."""
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            for name in os.listdir(dir_fd):
                os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
            os.fchown(dir_fd, uid, gid)
        finally:
            os.close(dir_fd)

    def list_dir(self, path: str) -> list[str]:
        try:
            return os.listdir(path)
        except FileNotFoundError:
            return []

    def create_tap(self, name: str, uid: int, gid: int, bridge: str | None, mtu: int | None) -> None:
        links.create_tap(name, uid, gid, bridge=bridge, mtu=mtu)

    def create_macvtap(self, name: str, parent: str, mac: str, mode: str, uid: int, gid: int,
                       device_path: str) -> None:
        links.create_macvtap(name, parent, mac, mode, uid, gid, device_path=device_path)

    def delete_link(self, name: str) -> None:
        links.delete_link(name)

    def owned_links(self) -> list[tuple[str, int, int]]:
        return links.list_owned_links()

    def make_root_dir(self, path: str) -> None:
        from .layout import ensure_root_dir
        ensure_root_dir(path, 0o711)

    def remove_device_nodes(self, path: str) -> None:
        from ..networks.devnode import remove_job_nodes
        remove_job_nodes(path)

    def apply_port_filters(self, job_id: int, ports: tuple[PortFilter, ...]) -> None:
        from ..networks import nft, portfilter
        nft.apply_ruleset(portfilter.ruleset(job_id, ports))

    def delete_port_filters(self, job_id: int) -> None:
        from ..networks import nft
        nft.delete_job_table(job_id)

    def port_filter_tables(self) -> list[tuple[str, int]]:
        from ..networks import nft
        return nft.list_job_tables()

    def ensure_underlay(self, plan: UnderlayPlan) -> None:
        from ..networks.underlay import ensure_underlay
        ensure_underlay(plan)

    def underlay_problems(self, plan: UnderlayPlan) -> list[str]:
        from ..networks.underlay import problems
        return problems(plan)

    def join_segment(self, vni: int, job_id: int, parent: str, locks: str, port: int, mtu: int | None,
                     private: bool, unicast_local: str | None = None, unicast_peers: tuple[str, ...] = ()) -> str:
        from ..networks.unicast import Unicast
        unicast = Unicast(unicast_local, tuple(unicast_peers)) if unicast_local else None
        return links.ensure_vxlan_segment(vni, job_id, parent, locks, port=port, mtu=mtu, private=private,
                                          unicast=unicast)

    def leave_segment(self, vni: int, job_id: int, locks: str) -> None:
        links.release_vxlan_segment(vni, job_id, locks)

    def segment_holders(self, locks: str) -> list[tuple[int, int]]:
        return links.segment_holders(locks)

    def orphan_segments(self, locks: str) -> list[tuple[int, list[str]]]:
        return links.orphan_segments(locks)

    def delete_orphan_segment(self, vni: int, locks: str) -> None:
        links.delete_orphan_segment(vni, locks)

    def check_volume(self, path: str, user: str, uid: int, gid: int, readonly: bool) -> VolumeInfo:
        return check_volume_as_user(path, uid, gid, os.getgrouplist(user, gid), readonly)

    def check_share(self, source: str, allowed: tuple[str, ...], home: str, user: str, uid: int, gid: int,
                    readonly: bool, field: str) -> str:
        try:
            return check_share_as_user(source, allowed, home, uid, gid, os.getgrouplist(user, gid), readonly)
        except NodeError as exc:
            raise ShareError(f"{field}: {source} {exc}") from None

    def reserve_volume(self, locks: str, info: VolumeInfo, job_id: int) -> None:
        VolumeReservations(locks).reserve(info, job_id)

    def release_volumes(self, locks: str, job_id: int) -> None:
        VolumeReservations(locks).release_job(job_id)

    def volume_holders(self, locks: str) -> list[tuple[str, int]]:
        return VolumeReservations(locks).holders()
