"""The checkpoint manifest: what a saved VM is, whose it is, and the sha256 of every file (pure + one writer).

A checkpoint directory is complete only when its manifest exists: the manifest is written last, atomically
(temporary file, fsync, rename, fsync of the directory), so a VMM killed mid-save leaves a directory without
a manifest, which is never used.

The VMM's saved state is a list of files (`states`): one migration stream for QEMU, config.json, state.json
and memory-ranges for cloud-hypervisor. Format 1 manifests (one `state` file, QEMU only) are still read.
Format 3 adds `guest_frozen`: whether the guest agent had frozen the guest's filesystems when it was saved
(slurm-vm's own record of its own request; format 1 and 2 manifests read as not frozen).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass, fields

from ..errors import SlurmVmError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 3
READABLE_FORMATS = (1, 2, 3)  # 1: a single `state` entry instead of `states`; 1, 2: no `guest_frozen`
STATE_NAME = "state.bin"
STATE_NAME_GZ = "state.bin.gz"     # written by slurm-vm before zstd (checkpoint.compress: true); still read
STATE_NAME_ZST = "state.bin.zst"
COMPRESSED_STATES = (STATE_NAME_GZ, STATE_NAME_ZST)
OVERLAY_NAME = "overlay.qcow2"
MAX_MANIFEST_BYTES = 64 * 1024
CHUNK = 1 << 20


class CheckpointRefused(SlurmVmError):
    """A checkpoint that must not be used; the message says why, for the job's output."""


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    job_id: int
    uid: int
    user: str
    restart_count: int
    reason: str             # preempt | timeout | manual
    created: float          # seconds since the epoch
    image: str              # the image's name in the store; the base image is referenced, never copied
    base_image: str
    base_size: int
    vmm: str                # qemu | cloud-hypervisor
    vmm_version: str
    accelerator: str        # kvm | tcg
    cpus: int
    memory_bytes: int
    macs: tuple[str, ...]
    instance_id: str
    compressed: bool
    states: tuple[FileEntry, ...]   # the VMM's saved state, one or more files
    overlay: FileEntry
    guest_frozen: bool = False      # the guest's filesystems were frozen through its agent (consistent disk)
    format: int = MANIFEST_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @property
    def state_size(self) -> int:
        return sum(e.size for e in self.states)

    @property
    def total_size(self) -> int:
        return self.state_size + self.overlay.size

    @property
    def files(self) -> tuple[FileEntry, ...]:
        return (*self.states, self.overlay)


@dataclass(frozen=True)
class Expected:
    """What the job about to restore is: a manifest must match it in every field."""
    job_id: int
    uid: int
    vmm: str
    accelerator: str
    cpus: int
    memory_bytes: int
    macs: tuple[str, ...]
    base_image: str


def _entry(data: object, where: str) -> FileEntry:
    if not isinstance(data, dict) or set(data) != {f.name for f in fields(FileEntry)}:
        raise CheckpointRefused(f"manifest: {where} is malformed")
    name, size, digest = data["name"], data["size"], data["sha256"]
    if not isinstance(name, str) or "/" in name or name in ("", ".", "..") or name == MANIFEST_NAME:
        raise CheckpointRefused(f"manifest: {where}.name is not a plain file name")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise CheckpointRefused(f"manifest: {where}.size is not a size")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise CheckpointRefused(f"manifest: {where}.sha256 is not a sha256")
    return FileEntry(name, size, digest)


TYPES = {"job_id": int, "uid": int, "user": str, "restart_count": int, "reason": str, "created": (int, float),
         "image": str, "base_image": str, "base_size": int, "vmm": str, "vmm_version": str, "accelerator": str,
         "cpus": int, "memory_bytes": int, "macs": list, "instance_id": str, "compressed": bool, "format": int,
         "guest_frozen": bool}


def json_object(text: str | bytes, what: str) -> dict:
    """`text` as a JSON object; CheckpointRefused naming `what` when it is not one (a damaged file)."""
    try:
        data = json.loads(text)
    except ValueError:
        raise CheckpointRefused(f"{what} is not JSON (damaged)") from None
    if not isinstance(data, dict):
        raise CheckpointRefused(f"{what} is not a JSON object (damaged)")
    return data


def parse_manifest(text: str | bytes) -> Manifest:
    """Strict: every key present with its type, nothing unknown. Raises CheckpointRefused."""
    data = json_object(text, "manifest")
    if data.get("format") not in READABLE_FORMATS or isinstance(data.get("format"), bool):
        raise CheckpointRefused(f"manifest format {data.get('format')!r} is not one of {READABLE_FORMATS}")
    names = {f.name for f in fields(Manifest)}
    if data["format"] < 3:
        if "guest_frozen" in data:
            raise CheckpointRefused(f"manifest has an unexpected key 'guest_frozen' for format {data['format']}")
        data = {**data, "guest_frozen": False}
    if data["format"] == 1:
        names = (names - {"states"}) | {"state"}
    if set(data) != names:
        odd = sorted(set(data) ^ names)[0]
        raise CheckpointRefused(f"manifest has an unexpected or missing key {odd!r} (damaged or another version)")
    for key, kind in TYPES.items():
        value = data[key]
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            raise CheckpointRefused(f"manifest: {key} has the wrong type (damaged)")
    if not all(isinstance(m, str) for m in data["macs"]):
        raise CheckpointRefused("manifest: macs has the wrong type (damaged)")
    if data["format"] == 1:
        states = (_entry(data.pop("state"), "state"),)
    elif isinstance(data["states"], list) and data["states"]:
        states = tuple(_entry(item, f"states[{i}]") for i, item in enumerate(data["states"]))
    else:
        raise CheckpointRefused("manifest: states is not a list of files (damaged)")
    overlay = _entry(data["overlay"], "overlay")
    names = [e.name for e in (*states, overlay)]
    if len(set(names)) != len(names):
        raise CheckpointRefused("manifest: two files have the same name (damaged)")
    return Manifest(**{**data, "format": MANIFEST_FORMAT, "macs": tuple(data["macs"]), "states": states,
                       "overlay": overlay})


def mismatches(manifest: Manifest, expected: Expected) -> list[str]:
    """Why this manifest must not be restored into the expected job (empty: it may)."""
    reasons = []
    if manifest.uid != expected.uid:
        reasons.append(f"it belongs to uid {manifest.uid}, not to the job's user (uid {expected.uid})")
    if manifest.job_id != expected.job_id:
        reasons.append(f"it was saved by job {manifest.job_id}, not job {expected.job_id}")
    for key, what in (("vmm", "hypervisor"), ("accelerator", "accelerator"), ("cpus", "vCPU count"),
                      ("memory_bytes", "memory size"), ("macs", "NIC MACs"), ("base_image", "base image")):
        saved, now = getattr(manifest, key), getattr(expected, key)
        if saved != now:
            reasons.append(f"the {what} differs (saved {_show(saved)}, now {_show(now)})")
    return reasons


def version_mismatch(manifest: Manifest, vmm: str, version: str) -> str | None:
    """QEMU loads a migration stream only from the same machine type; slurm-vm uses the unversioned machine
    aliases (pc, q35), which change with every QEMU release: the version must be the same."""
    if manifest.vmm != vmm or manifest.vmm_version != version:
        return f"it was saved by {manifest.vmm} {manifest.vmm_version}, this node runs {vmm} {version}"
    return None


def _show(value: object) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


def sha256_of(path: str, dir_fd: int | None = None) -> tuple[int, str]:
    """(size, hex digest) of a regular file, opened without following a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointRefused(f"{path} is not a regular file")
        digest, size = hashlib.sha256(), 0
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()
    finally:
        os.close(fd)


def verify_files(directory: str, manifest: Manifest, uid: int) -> None:
    """Sizes, owners and sha256 of the checkpoint's files. Raises CheckpointRefused naming the file."""
    for entry in manifest.files:
        path = os.path.join(directory, entry.name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise CheckpointRefused(f"{entry.name} is missing") from None
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointRefused(f"{entry.name} is not a regular file")
        if st.st_uid != uid:
            raise CheckpointRefused(f"{entry.name} is owned by uid {st.st_uid}, not the job's user")
        if st.st_size != entry.size:
            raise CheckpointRefused(f"{entry.name} has {st.st_size} bytes, the manifest says {entry.size} (damaged)")
        if sha256_of(path)[1] != entry.sha256:
            raise CheckpointRefused(f"{entry.name} does not match its sha256 in the manifest (damaged)")


def read_owned_file(path: str, uid: int, limit: int, what: str) -> bytes:
    """A small regular file of the user's checkpoint dir, read without following links or blocking (a FIFO
    put there is refused, not waited on). Raises CheckpointRefused (missing, foreign, not a file, too large)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CheckpointRefused(f"no {what} (the save did not finish)") from None
    except OSError as exc:
        raise CheckpointRefused(f"cannot read the {what}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointRefused(f"the {what} is not a regular file")
        if st.st_uid != uid:
            raise CheckpointRefused(f"the {what} is owned by uid {st.st_uid}, not the job's user (uid {uid})")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise CheckpointRefused(f"the {what} is too large (damaged)")
    return data


def read_manifest(directory: str, uid: int) -> Manifest:
    """The manifest of one checkpoint directory. Raises CheckpointRefused (missing, foreign, damaged)."""
    return parse_manifest(read_owned_file(os.path.join(directory, MANIFEST_NAME), uid, MAX_MANIFEST_BYTES,
                                          "manifest"))


def write_manifest(directory: str, manifest: Manifest) -> None:
    """Atomically, and last: tmp file, fsync, rename, fsync the directory."""
    tmp = os.path.join(directory, f".{MANIFEST_NAME}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, manifest.to_json().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(directory, MANIFEST_NAME))
    fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
