"""An in-memory node for unit tests of prepare/teardown/doctor: the System interface over plain dicts.

It keeps the real system's rules that the host objects rely on (a file needs its directory; deleting a
missing link or file is fine; a private segment refuses a second job) and can fail the N-th create.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from slurm_vm.disks.volumes import VolumeInfo
from slurm_vm.errors import NodeError, ShareError, VolumeError
from slurm_vm.networks.names import parse_owned_name, vxlan_bridge_name


@dataclass
class FakeSystem:
    dirs: set[str] = field(default_factory=set)
    files: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, dict] = field(default_factory=dict)
    segments: dict[int, set[int]] = field(default_factory=dict)
    reservations: dict[str, int] = field(default_factory=dict)
    tables: dict[int, tuple] = field(default_factory=dict)     # nftables port filter tables by job
    owners: dict[str, tuple[int, int]] = field(default_factory=dict)
    unreadable: set[str] = field(default_factory=set)
    fail_at_create: int | None = None      # the N-th create call (0-based) raises NodeError
    creates: int = 0

    def _create(self, what: str) -> None:
        if self.fail_at_create is not None and self.creates == self.fail_at_create:
            self.creates += 1
            raise NodeError(f"injected failure creating {what}")
        self.creates += 1

    def _need_dir(self, path: str) -> None:
        if os.path.dirname(path) not in self.dirs:
            raise NodeError(f"{os.path.dirname(path)} does not exist")

    def empty(self) -> bool:
        return not (self.dirs or self.files or self.links or self.reservations or any(self.segments.values())
                    or self.tables)

    # files
    def make_private_dir(self, path: str) -> None:
        self._create(path)
        self.dirs.add(path)

    def write_private_file(self, path: str, data: bytes) -> None:
        self._need_dir(path)
        self._create(path)
        self.files[path] = data

    def create_overlay(self, base: str, base_format: str, overlay: str, size: int | None, qemu_img: str,
                       base_size: int | None = None) -> None:
        self._need_dir(overlay)
        self._create(overlay)
        self.files[overlay] = f"qcow2 backing {base} ({base_format}) {size}".encode()

    def remove_tree(self, path: str) -> None:
        inside = path.rstrip("/") + "/"
        self.dirs = {d for d in self.dirs if d != path and not d.startswith(inside)}
        self.files = {f: v for f, v in self.files.items() if f != path and not f.startswith(inside)}

    def remove_job_dir(self, path: str, trash: str, seconds: float) -> bool:
        self.remove_tree(path)
        return True

    def empty_trash(self, trash: str, seconds: float) -> list[str]:
        return []

    def give_dir_to_user(self, path: str, uid: int, gid: int) -> None:
        if path not in self.dirs:
            raise NodeError(f"{path} does not exist")
        for name in [path, *(f for f in self.files if os.path.dirname(f) == path)]:
            self.owners[name] = (uid, gid)

    def list_dir(self, path: str) -> list[str]:
        entries = {os.path.basename(p) for p in (*self.dirs, *self.files) if os.path.dirname(p) == path}
        if os.path.isdir(path):   # the journal lives on the real filesystem of the test
            entries |= set(os.listdir(path))
        return sorted(entries)

    # network devices
    def create_tap(self, name: str, uid: int, gid: int, bridge: str | None, mtu: int | None) -> None:
        if bridge and bridge not in self.links and not bridge.startswith("br-admin"):
            raise NodeError(f"bridge {bridge!r} does not exist")
        self._create(name)
        self.links[name] = {"kind": "tap", "uid": uid, "bridge": bridge}

    def create_macvtap(self, name: str, parent: str, mac: str, mode: str, uid: int, gid: int,
                       device_path: str) -> None:
        self._need_dir(device_path)
        self._create(name)
        self.links[name] = {"kind": "macvtap", "parent": parent, "mac": mac}
        self.files[device_path] = b"char device"

    def delete_link(self, name: str) -> None:
        self.links.pop(name, None)

    def make_root_dir(self, path: str) -> None:
        if path not in self.dirs:
            self._create(path)
            self.dirs.add(path)

    def remove_device_nodes(self, path: str) -> None:
        self.remove_tree(path)

    # port filters
    def apply_port_filters(self, job_id: int, ports: tuple) -> None:
        self._create(f"table svm_{job_id}")
        self.tables[job_id] = ports

    def delete_port_filters(self, job_id: int) -> None:
        self.tables.pop(job_id, None)

    def port_filter_tables(self) -> list[tuple[str, int]]:
        return [(f"svm_{job}", job) for job in self.tables]

    def ensure_underlay(self, plan) -> None:
        self.underlay = plan

    def underlay_problems(self, plan) -> list[str]:
        return [] if getattr(self, "underlay", None) == plan else ["no VXLAN guard"]

    def owned_links(self) -> list[tuple[str, int, int]]:
        return [(name, *owned) for name in self.links if (owned := parse_owned_name(name))]

    # VXLAN segment references
    def join_segment(self, vni: int, job_id: int, parent: str, locks: str, port: int, mtu: int | None,
                     private: bool, unicast_local: str | None = None, unicast_peers: tuple[str, ...] = ()) -> str:
        jobs = self.segments.setdefault(vni, set())
        if private and jobs - {job_id}:
            raise NodeError(f"VXLAN segment {vni} is another job's private segment")
        self._create(f"segment {vni}")
        jobs.add(job_id)
        self.links[vxlan_bridge_name(vni)] = {"kind": "bridge"}
        return vxlan_bridge_name(vni)

    def leave_segment(self, vni: int, job_id: int, locks: str) -> None:
        jobs = self.segments.get(vni, set())
        jobs.discard(job_id)
        if not jobs:
            self.segments.pop(vni, None)
            self.links.pop(vxlan_bridge_name(vni), None)

    def segment_holders(self, locks: str) -> list[tuple[int, int]]:
        return [(vni, job) for vni, jobs in self.segments.items() for job in jobs]

    def orphan_segments(self, locks: str) -> list[tuple[int, list[str]]]:
        held = {vni for vni, jobs in self.segments.items() if jobs}
        return [(int(name[5:]), []) for name in sorted(self.links) if name.startswith("svmbr")
                and int(name[5:]) not in held]

    def delete_orphan_segment(self, vni: int, locks: str) -> None:
        self.links.pop(f"svmbr{vni}", None)

    # persistent volumes
    def check_volume(self, path: str, user: str, uid: int, gid: int, readonly: bool) -> VolumeInfo:
        if path in self.unreadable:
            raise VolumeError(f"volume {path}: you may not read it")
        return VolumeInfo(path, 1, hash(path) & 0xFFFF, 1 << 20, "raw")

    def check_share(self, source: str, allowed: tuple[str, ...], home: str, user: str, uid: int, gid: int,
                    readonly: bool, field: str) -> str:
        if source in self.unreadable:
            raise ShareError(f"{field}: {source} you may not read it")
        return "/resolved" + source

    def reserve_volume(self, locks: str, info: VolumeInfo, job_id: int) -> None:
        name = f"{info.st_dev}-{info.st_ino}"
        owner = self.reservations.get(name)
        if owner is not None and owner != job_id:
            raise VolumeError(f"volume {info.path} is attached to job {owner}")
        self._create(f"reservation {name}")
        self.reservations[name] = job_id

    def release_volumes(self, locks: str, job_id: int) -> None:
        self.reservations = {k: v for k, v in self.reservations.items() if v != job_id}

    def volume_holders(self, locks: str) -> list[tuple[str, int]]:
        return list(self.reservations.items())
