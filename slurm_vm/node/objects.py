"""One class per kind of host object a VM job owns on a node: how it is made, undone, swept and found.

- `create(system, scope)` makes the object (the prolog records it in the journal first);
- `undo(system, scope, data)` removes the object a journal entry names, after proving it is the job's:
  files only inside the job's own directory, links only when their name carries the job id;
- `sweep(system, scope)` removes what a lost or torn journal missed, found by name;
- `leftovers(system, state_dir)` lists every object of this kind on the node with its job id (node doctor).

The journal stores `kind` and `record()`; teardown and doctor iterate KINDS. A new kind of host object
is one class here plus its entry in KINDS (see docs/architecture.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from ..disks.volumes import VolumeInfo
from ..errors import NodeError
from ..networks.names import parse_owned_name
from ..networks.portfilter import PortFilter
from .layout import error_note_path, job_dir, jobs_dir, journal_dir, locks_dir, nic_nodes_dir, nics_dir, trash_dir
from .system import System

# A teardown's budget for removing a job dir the user filled; the rest of it waits in the trash for the
# next hook (the epilog's whole limit is timelimit.EPILOG_TIMEOUT_SECONDS).
JOB_DIR_SECONDS = 20.0
TRASH_SECONDS = 10.0


@dataclass(frozen=True)
class Scope:
    """The job whose objects are made or undone, and where its node state lives."""

    state_dir: str
    job_id: int

    @property
    def job_dir(self) -> str:
        return job_dir(self.state_dir, self.job_id)

    @property
    def locks(self) -> str:
        return locks_dir(self.state_dir)

    @property
    def nic_nodes(self) -> str:
        return nic_nodes_dir(self.state_dir, self.job_id)

    def inside_job_dir(self, path: str) -> bool:
        directory = self.job_dir
        return path != directory and os.path.commonpath([os.path.abspath(path), directory]) == directory


@dataclass(frozen=True)
class Leftover:
    kind: str
    name: str
    job_id: int


class HostObject:
    kind: ClassVar[str]

    def record(self) -> dict:
        """What the journal keeps: enough to undo the object after a crash."""
        raise NotImplementedError

    def create(self, system: System, scope: Scope) -> None:
        raise NotImplementedError

    @classmethod
    def undo(cls, system: System, scope: Scope, data: dict) -> str:
        raise NotImplementedError

    @classmethod
    def sweep(cls, system: System, scope: Scope) -> list[str]:
        return []

    @classmethod
    def leftovers(cls, system: System, state_dir: str) -> list[Leftover]:
        return []


def _numbered(system: System, directory: str, suffix: str = "") -> list[tuple[int, str]]:
    """(job id, path) of the entries of `directory` named `<job id><suffix>`."""
    out = []
    for name in system.list_dir(directory):
        stem = name[: len(name) - len(suffix)] if name.endswith(suffix) else ""
        if stem.isdigit():
            out.append((int(stem), os.path.join(directory, name)))
    return out


@dataclass(frozen=True)
class JobDir(HostObject):
    """<state>/jobs/<job id>: the VM's run dir, root's until the handover step gives it to the user."""

    kind: ClassVar[str] = "job_dir"
    path: str

    def record(self) -> dict:
        return {"path": self.path}

    def create(self, system: System, scope: Scope) -> None:
        system.make_private_dir(self.path)

    @classmethod
    def undo(cls, system: System, scope: Scope, data: dict) -> str:
        if data.get("path") != scope.job_dir:
            raise NodeError(f"journal names job dir {data.get('path')!r}, expected {scope.job_dir}: not removed")
        return cls._remove(system, scope)

    @classmethod
    def sweep(cls, system: System, scope: Scope) -> list[str]:
        return [cls._remove(system, scope)]

    @classmethod
    def _remove(cls, system: System, scope: Scope) -> str:
        if system.remove_job_dir(scope.job_dir, trash_dir(scope.state_dir), JOB_DIR_SECONDS):
            return f"removed {scope.job_dir}"
        return f"moved {scope.job_dir} to the trash (too big to remove now: the next hooks go on)"

    @classmethod
    def leftovers(cls, system: System, state_dir: str) -> list[Leftover]:
        return [Leftover("job dir", path, job) for job, path in _numbered(system, jobs_dir(state_dir))]


class Trash(HostObject):
    """<state>/trash/<job id>.<tag>: job dirs moved aside because removing them took longer than a hook
    may wait (a user can fill a job dir with millions of files). Every teardown removes some more."""

    kind: ClassVar[str] = "trash"

    @classmethod
    def sweep(cls, system: System, scope: Scope) -> list[str]:
        left = system.empty_trash(trash_dir(scope.state_dir), TRASH_SECONDS)
        return [f"trash: {len(left)} job dirs still being removed"] if left else []

    @classmethod
    def leftovers(cls, system: System, state_dir: str) -> list[Leftover]:
        out = []
        for name in system.list_dir(trash_dir(state_dir)):
            stem = name.split(".")[0]
            out.append(Leftover("job dir being removed", os.path.join(trash_dir(state_dir), name),
                                int(stem) if stem.isdigit() else 0))
        return out


@dataclass(frozen=True)
class ErrorNote(HostObject):
    """<state>/jobs/<job id>.error: why the prolog refused the job, for the launcher to print.

    Written outside the journal (it must outlive the prolog's rollback); the epilog's sweep removes it."""

    kind: ClassVar[str] = "error_note"

    @classmethod
    def sweep(cls, system: System, scope: Scope) -> list[str]:
        system.remove_tree(error_note_path(scope.state_dir, scope.job_id))
        return ["error note"]

    @classmethod
    def leftovers(cls, system: System, state_dir: str) -> list[Leftover]:
        return [Leftover("error note", path, job) for job, path in _numbered(system, jobs_dir(state_dir), ".error")]


@dataclass(frozen=True)
class JobFile(HostObject):
    """A root-written file inside the job dir (seed ISO, vm.json): written atomically, 0600."""

    kind: ClassVar[str] = "file"
    path: str
    data: bytes = b""

    def record(self) -> dict:
        return {"path": self.path}

    def create(self, system: System, scope: Scope) -> None:
        system.write_private_file(self.path, self.data)

    @classmethod
    def undo(cls, system: System, scope: Scope, data: dict) -> str:
        path = str(data.get("path", ""))
        if not scope.inside_job_dir(path):
            raise NodeError(f"journal names a file outside the job dir ({path!r}): not removed")
        system.remove_tree(path)
        return f"removed {path}"


@dataclass(frozen=True)
class Overlay(JobFile):
    """The VM's root disk: a qcow2 overlay in the job dir whose backing file is the admin's base image."""

    kind: ClassVar[str] = "overlay"
    base: str = ""
    base_format: str = "qcow2"
    size: int | None = None
    qemu_img: str = "qemu-img"
    base_size: int | None = None     # a user's image: its size as inspected as the user (root never opens it)

    def create(self, system: System, scope: Scope) -> None:
        system.create_overlay(self.base, self.base_format, self.path, self.size, self.qemu_img, self.base_size)


def _undo_owned_link(system: System, scope: Scope, name: str) -> str:
    owned = parse_owned_name(name)
    if owned is None or owned[0] != scope.job_id:
        raise NodeError(f"journal names link {name!r}, which is not this job's: not removed")
    system.delete_link(name)
    return f"deleted link {name}"


@dataclass(frozen=True)
class Tap(HostObject):
    """A persistent tap owned by the job's user, up, on a bridge (an admin's or a job segment's)."""

    kind: ClassVar[str] = "tap"
    name: str
    uid: int
    gid: int
    bridge: str | None = None
    mtu: int | None = None

    def record(self) -> dict:
        return {"name": self.name}

    def create(self, system: System, scope: Scope) -> None:
        system.create_tap(self.name, self.uid, self.gid, self.bridge, self.mtu)

    @classmethod
    def undo(cls, system: System, scope: Scope, data: dict) -> str:
        return _undo_owned_link(system, scope, str(data.get("name", "")))

    @classmethod
    def sweep(cls, system: System, scope: Scope) -> list[str]:
        """Every link named after the job (taps and macvtaps share networks.names.nic_name)."""
        done = []
        for name, owner, _ in system.owned_links():
            if owner == scope.job_id:
                system.delete_link(name)
                done.append(f"link {name}")
        return done

    @classmethod
    def leftovers(cls, system: System, state_dir: str) -> list[Leftover]:
        return [Leftover("link", name, job) for name, job, _ in system.owned_links()]


@dataclass(frozen=True)
class Macvtap(HostObject):
    """A macvtap on an admin's parent interface, and its character device node: root's, in
    <state>/nics/<job>/, opened by the job's user through an ACL (networks/devnode.py)."""

    kind: ClassVar[str] = "macvtap"
    name: str
    parent: str
    mac: str
    mode: str
    uid: int
    gid: int
    device_path: str

    def record(self) -> dict:
        return {"name": self.name, "device_path": self.device_path}

    def create(self, system: System, scope: Scope) -> None:
        if os.path.dirname(self.device_path) != scope.nic_nodes:
            raise NodeError(f"macvtap device node {self.device_path} is not in {scope.nic_nodes}")
        system.make_root_dir(scope.nic_nodes)
        system.create_macvtap(self.name, self.parent, self.mac, self.mode, self.uid, self.gid, self.device_path)

    @classmethod
    def undo(cls, system: System, scope: Scope, data: dict) -> str:
        done = _undo_owned_link(system, scope, str(data.get("name", "")))
        device = str(data.get("device_path", ""))
        if device and os.path.dirname(device) == scope.nic_nodes:
            system.remove_device_nodes(scope.nic_nodes)
        elif device:                               # slurm-vm 0.1 made the node in the job dir
            JobFile.undo(system, scope, {"path": device})
        return done

    @classmethod
    def sweep(cls, system: System, scope: Scope) -> list[str]:
        system.remove_device_nodes(scope.nic_nodes)
        return ["macvtap device nodes"]

    @classmethod
    def leftovers(cls, system: System, state_dir: str) -> list[Leftover]:
        return [Leftover("macvtap device nodes", path, job) for job, path in _numbered(system, nics_dir(state_dir))]


@dataclass(frozen=True)
class PortFilterTable(HostObject):
    """The job's anti-spoofing rules: nftables table `netdev svm_<job>` with a chain on each filtered port."""

    kind: ClassVar[str] = "port_filter"
    ports: tuple[PortFilter, ...] = ()

    def record(self) -> dict:
        return {}

    def create(self, system: System, scope: Scope) -> None:
        system.apply_port_filters(scope.job_id, self.ports)

    @classmethod
    def undo(cls, system: System, scope: Scope, data: dict) -> str:
        system.delete_port_filters(scope.job_id)
        return f"deleted the port filter table of job {scope.job_id}"

    @classmethod
    def sweep(cls, system: System, scope: Scope) -> list[str]:
        if any(job == scope.job_id for _, job in system.port_filter_tables()):
            system.delete_port_filters(scope.job_id)
            return [f"port filter table of job {scope.job_id}"]
        return []

    @classmethod
    def leftovers(cls, system: System, state_dir: str) -> list[Leftover]:
        return [Leftover("port filter table", name, job) for name, job in system.port_filter_tables()]


@dataclass(frozen=True)
class VxlanSegmentRef(HostObject):
    """The job's reference on a VXLAN segment (device + bridge, shared by the node's jobs on that VNI)."""

    kind: ClassVar[str] = "vxlan_segment"
    vni: int
    parent: str
    port: int = 4789
    mtu: int | None = None
    private: bool = False
    unicast_local: str | None = None      # unicast VXLAN: this node's underlay address ...
    unicast_peers: tuple[str, ...] = ()   # ... and the job's other nodes'

    def record(self) -> dict:
        return {"vni": self.vni}

    def create(self, system: System, scope: Scope) -> None:
        system.join_segment(self.vni, scope.job_id, self.parent, scope.locks, self.port, self.mtu, self.private,
                            self.unicast_local, self.unicast_peers)

    @classmethod
    def undo(cls, system: System, scope: Scope, data: dict) -> str:
        vni = data.get("vni")
        if not isinstance(vni, int) or isinstance(vni, bool):
            raise NodeError(f"journal names VXLAN segment {vni!r}: not a VNI")
        system.leave_segment(vni, scope.job_id, scope.locks)
        return f"released VXLAN segment {vni}"

    @classmethod
    def sweep(cls, system: System, scope: Scope) -> list[str]:
        done = []
        for vni, job in system.segment_holders(scope.locks):
            if job == scope.job_id:
                system.leave_segment(vni, job, scope.locks)
                done.append(f"VXLAN segment {vni}")
        return done

    @classmethod
    def leftovers(cls, system: System, state_dir: str) -> list[Leftover]:
        return [Leftover("VXLAN segment reference", f"vni {vni}", job)
                for vni, job in system.segment_holders(locks_dir(state_dir))]


class OrphanSegment(HostObject):
    """A VXLAN segment (device with its FDB entries, bridge, VTEP filter) no job's reference holds: reported
    under job 0, removed by `node doctor --fix` (which tears down job 0)."""

    kind: ClassVar[str] = "orphan_segment"

    @classmethod
    def sweep(cls, system: System, scope: Scope) -> list[str]:
        orphans = system.orphan_segments(scope.locks) if scope.job_id == 0 else []
        for vni, _ in orphans:
            system.delete_orphan_segment(vni, scope.locks)
        return [f"orphan VXLAN segment {vni}" for vni, _ in orphans]

    @classmethod
    def leftovers(cls, system: System, state_dir: str) -> list[Leftover]:
        return [Leftover("VXLAN segment without a job", f"vni {vni}" + (f" (FDB to {', '.join(p)})" if p else ""), 0)
                for vni, p in system.orphan_segments(locks_dir(state_dir))]


@dataclass(frozen=True)
class VolumeReservation(HostObject):
    """The job's claim on its persistent volumes, so two jobs on a node never attach one read-write."""

    kind: ClassVar[str] = "volume_reservations"
    volumes: tuple[VolumeInfo, ...] = ()

    def record(self) -> dict:
        return {}

    def create(self, system: System, scope: Scope) -> None:
        for info in self.volumes:
            system.reserve_volume(scope.locks, info, scope.job_id)

    @classmethod
    def undo(cls, system: System, scope: Scope, data: dict) -> str:
        system.release_volumes(scope.locks, scope.job_id)
        return "released volume reservations"

    @classmethod
    def sweep(cls, system: System, scope: Scope) -> list[str]:
        system.release_volumes(scope.locks, scope.job_id)
        return ["volume reservations"]

    @classmethod
    def leftovers(cls, system: System, state_dir: str) -> list[Leftover]:
        return [Leftover("volume reservation", name, job) for name, job in system.volume_holders(locks_dir(state_dir))]


# Sweep order matters: links before the segments they sit on, the job dir (device nodes) after its links.
KINDS: dict[str, type[HostObject]] = {cls.kind: cls for cls in (
    PortFilterTable, Tap, Macvtap, VxlanSegmentRef, JobFile, Overlay, JobDir, ErrorNote, VolumeReservation,
    OrphanSegment, Trash)}
# Journal entries written by slurm-vm 0.1 name `link` for taps and macvtaps alike; deleting by name covers both.
KIND_ALIASES = {"link": "tap"}


def kind_of(name: str) -> type[HostObject] | None:
    return KINDS.get(KIND_ALIASES.get(name, name))


def journal_leftovers(system: System, state_dir: str) -> list[Leftover]:
    return [Leftover("journal", path, job) for job, path in _numbered(system, journal_dir(state_dir), ".jsonl")]
