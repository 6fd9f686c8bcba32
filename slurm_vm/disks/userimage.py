"""Inspecting a disk image a user owns without trusting a byte of it.

A user's image file is hostile input. A qcow2 header can name a backing file (/etc/shadow, another user's
image, a device, a `json:{...}` pseudo-filename with any block driver) or an external data file, claim a
virtual size of petabytes, or point its tables past the end of a truncated file; a raw file can carry a
qcow2 header so that anything *probing* its format would follow that header. So:

- the format is always fixed by the caller (never probed): `qcow2` or `raw`;
- the header is checked by fixed-format rules (`qcow2_problems`, pure) before any tool opens the file:
  no backing file, no external data file, no unknown incompatible feature, tables inside the file, a
  virtual size within the admin's limit;
- only then `qemu-img info` / `check` run, with the format fixed, on the *descriptor* that was checked
  (`/proc/self/fd/N`: the same inode, never a name a user could swap or a `json:` name qemu would parse),
  and their JSON is checked again (belt and braces: what qemu itself says it would open);
- all of it runs with the user's rights: on the login side the CLI is the user; root (the prolog) calls
  `inspect_image` only through `safefs.run_as_user`.

Every refusal is one line (`ImageError`) naming the file and why.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
from dataclasses import dataclass

from ..errors import ImageError, NodeError

QCOW2_MAGIC = b"QFI\xfb"
HEADER_READ = 65536                       # the header and its extensions live in the first cluster
FORMATS = ("qcow2", "raw")
QEMU_IMG_TIMEOUT = 120
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

# qcow2 incompatible feature bits (docs/interop/qcow2.txt)
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2
EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_DATA_FILE = 0x44415441
MAX_EXTENSIONS = 64


@dataclass(frozen=True)
class Qcow2Header:
    version: int
    backing_offset: int
    backing_size: int
    cluster_bits: int
    virtual_size: int
    l1_size: int
    l1_offset: int
    refcount_offset: int
    refcount_clusters: int
    incompatible: int
    extensions: tuple[int, ...]


@dataclass(frozen=True)
class ImageFacts:
    """What an accepted image is: all the slurm-vm needs to know of it."""
    format: str
    virtual_size: int
    file_size: int          # bytes the file takes (its length; for a qcow2 also what the quota counts)


def format_from_name(path: str, given: str | None = None) -> str:
    """The format a file is taken as: `given`, else its extension (.qcow2, .raw/.img). Never probed."""
    if given is not None:
        if given not in FORMATS:
            raise ImageError(f"--format {given}: give qcow2 or raw")
        return given
    ext = os.path.splitext(path)[1].lower()
    if ext == ".qcow2":
        return "qcow2"
    if ext in (".raw", ".img"):
        return "raw"
    raise ImageError(f"{path}: cannot tell its format from the name (.qcow2, .raw or .img); give --format qcow2|raw")


def check_path_name(path: str) -> None:
    """Refuse names qemu would not take as a plain file: `json:{...}` and other `protocol:` pseudo-filenames."""
    head = path.split("/", 1)[0]
    if ":" in head:
        raise ImageError(f"{path}: a `{head.split(':', 1)[0]}:` name is not a file; give the path of an image file")


def parse_qcow2_header(data: bytes) -> Qcow2Header | None:
    """The qcow2 header fields slurm-vm judges, or None when `data` does not start like a qcow2 v2/v3 file."""
    if len(data) < 72 or data[:4] != QCOW2_MAGIC:
        return None
    (version, backing_offset, backing_size, cluster_bits, size, _crypt, l1_size, l1_offset, refcount_offset,
     refcount_clusters, _nb_snapshots, _snapshots_offset) = struct.unpack(">IQIIQIIQQIIQ", data[4:72])
    if version not in (2, 3):
        return None
    incompatible, header_length, extensions = 0, 72, ()
    if version == 3:
        if len(data) < 104:
            return None
        incompatible = struct.unpack(">Q", data[72:80])[0]
        header_length = struct.unpack(">I", data[100:104])[0]
        extensions = _extension_types(data, header_length)
    return Qcow2Header(version, backing_offset, backing_size, cluster_bits, size, l1_size, l1_offset,
                       refcount_offset, refcount_clusters, incompatible, extensions)


def _extension_types(data: bytes, offset: int) -> tuple[int, ...]:
    types: list[int] = []
    while len(types) < MAX_EXTENSIONS and offset + 8 <= len(data):
        kind, length = struct.unpack(">II", data[offset:offset + 8])
        if kind == EXT_END:
            break
        types.append(kind)
        offset += 8 + ((length + 7) & ~7)
    return tuple(types)


def qcow2_problems(header: Qcow2Header, file_size: int, max_virtual_size: int) -> list[str]:
    """Why a qcow2 header is refused (fixed-format rules, no I/O); empty: acceptable."""
    problems = []
    if header.backing_offset or header.backing_size or EXT_BACKING_FORMAT in header.extensions:
        problems.append("it names a backing file (slurm-vm takes self-contained images only: "
                        "`qemu-img convert -O qcow2` makes one)")
    if header.incompatible & INCOMPAT_DATA_FILE or EXT_DATA_FILE in header.extensions:
        problems.append("it names an external data file (self-contained images only)")
    if header.incompatible & ~INCOMPAT_KNOWN:
        problems.append(f"unknown incompatible qcow2 features {header.incompatible & ~INCOMPAT_KNOWN:#x}")
    if header.incompatible & INCOMPAT_CORRUPT:
        problems.append("qemu marked it corrupt")
    if header.virtual_size > max_virtual_size:
        problems.append(f"its virtual size {_human(header.virtual_size)} is above the site's limit of "
                        f"{_human(max_virtual_size)}")
    if not 9 <= header.cluster_bits <= 21:
        problems.append(f"cluster_bits {header.cluster_bits} is not a valid qcow2 cluster size")
    else:
        cluster = 1 << header.cluster_bits
        ends = (header.l1_offset + 8 * header.l1_size, header.refcount_offset + cluster * header.refcount_clusters)
        if max(ends) > file_size:
            problems.append(f"it is truncated: its tables reach byte {max(ends)} of a {file_size}-byte file")
    return problems


def _human(size: int) -> str:
    for unit, shift in (("P", 50), ("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.4g}{unit}"
    return f"{size}B"


def open_image(path: str) -> int:
    """A read-only descriptor of the regular file `path` (never through a symlink, never a device or FIFO)."""
    check_path_name(path)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == 40:   # ELOOP: the last component is a symlink
            raise ImageError(f"{path}: is a symbolic link; give the image file itself") from None
        raise ImageError(f"{path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ImageError(f"{path}: is not a regular file (devices, FIFOs and directories are not images)")
    return fd


def check_header(path: str, fd: int, fmt: str, max_virtual_size: int) -> int:
    """The fixed-format rules on the open file; returns the size the header gives (raw: the file's)."""
    file_size = os.fstat(fd).st_size
    data = os.pread(fd, HEADER_READ, 0)
    if fmt == "raw":
        if data[:4] == QCOW2_MAGIC:
            raise ImageError(f"{path}: taken as raw but it starts with a qcow2 header (format mismatch); "
                             "name it .qcow2 or give --format qcow2")
        if file_size == 0:
            raise ImageError(f"{path}: is empty")
        if file_size > max_virtual_size:
            raise ImageError(f"{path}: its size {_human(file_size)} is above the site's limit of "
                             f"{_human(max_virtual_size)}")
        return file_size
    header = parse_qcow2_header(data)
    if header is None:
        raise ImageError(f"{path}: taken as qcow2 but it is not a qcow2 v2/v3 file (format mismatch: a raw "
                         "image? name it .raw or give --format raw)")
    problems = qcow2_problems(header, file_size, max_virtual_size)
    if problems:
        raise ImageError(f"{path}: refused: {'; '.join(problems)}")
    return header.virtual_size


def run_qemu_img(qemu_img: str, args: list[str], pass_fds: tuple[int, ...] = (), ok_codes: tuple[int, ...] = (0,),
                 timeout: int = QEMU_IMG_TIMEOUT) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run([qemu_img, *args], capture_output=True, text=True, timeout=timeout, check=False,
                              pass_fds=pass_fds)
    except FileNotFoundError:
        raise NodeError(f"{qemu_img} not found: install qemu-utils or set hypervisor.qemu_img") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"qemu-img {args[0]} took longer than {timeout}s") from None
    if proc.returncode not in ok_codes:
        raise ImageError(f"qemu-img {args[0]} refused it: {' '.join(proc.stderr.split())[:300] or 'no answer'}")
    return proc


def qemu_img_json(qemu_img: str, args: list[str], fd: int, ok_codes: tuple[int, ...] = (0,),
                  timeout: int = QEMU_IMG_TIMEOUT) -> dict:
    """`qemu-img ARGS /proc/self/fd/<fd>` with the descriptor inherited: qemu opens the inode that was checked."""
    proc = run_qemu_img(qemu_img, [*args, f"/proc/self/fd/{fd}"], (fd,), ok_codes, timeout)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        out = None
    if not isinstance(out, dict):
        raise ImageError(f"qemu-img {args[0]} gave no JSON: {' '.join(proc.stderr.split())[:300]}")
    out["_rc"] = proc.returncode
    return out


def info_problems(info: dict, fmt: str, max_virtual_size: int) -> list[str]:
    """What qemu-img info's JSON shows that slurm-vm refuses (pure)."""
    problems = []
    if info.get("format") != fmt:
        problems.append(f"qemu-img sees format {info.get('format')!r}, not {fmt}")
    if "backing-filename" in info or "full-backing-filename" in info:
        problems.append("it names a backing file")
    data = (info.get("format-specific") or {}).get("data") or {}
    if "data-file" in data:
        problems.append("it names an external data file")
    if data.get("corrupt"):
        problems.append("qemu marked it corrupt")
    size = info.get("virtual-size")
    if not isinstance(size, int) or size <= 0:
        problems.append("qemu-img gives no virtual size")
    elif size > max_virtual_size:
        problems.append(f"its virtual size {_human(size)} is above the site's limit of {_human(max_virtual_size)}")
    return problems


def inspect_fd(path: str, fd: int, fmt: str, max_virtual_size: int, qemu_img: str = "qemu-img",
               deep: bool = True) -> ImageFacts:
    """Header rules, then qemu-img info (and with `deep`, qemu-img check) on the descriptor."""
    check_header(path, fd, fmt, max_virtual_size)
    info = qemu_img_json(qemu_img, ["info", "--output=json", "-U", "-f", fmt], fd)
    problems = info_problems(info, fmt, max_virtual_size)
    if problems:
        raise ImageError(f"{path}: refused: {'; '.join(problems)}")
    if deep and fmt == "qcow2":
        check = qemu_img_json(qemu_img, ["check", "--output=json", "-U", "-f", "qcow2"], fd, ok_codes=(0, 2, 3))
        if check.get("corruptions") or check.get("check-errors") or check["_rc"] == 2:
            raise ImageError(f"{path}: refused: it is damaged or truncated (qemu-img check: "
                             f"{check.get('corruptions', 0)} corruptions, {check.get('check-errors', 0)} errors)")
    return ImageFacts(format=fmt, virtual_size=int(info["virtual-size"]), file_size=os.fstat(fd).st_size)


def inspect_image(path: str, fmt: str, max_virtual_size: int, qemu_img: str = "qemu-img",
                  deep: bool = True) -> ImageFacts:
    """Inspect the image file `path` taken as `fmt`. Call it as the file's user (root: through run_as_user)."""
    if fmt not in FORMATS:
        raise ImageError(f"{path}: format {fmt!r}: give qcow2 or raw")
    fd = open_image(path)
    try:
        return inspect_fd(path, fd, fmt, max_virtual_size, qemu_img, deep)
    finally:
        os.close(fd)
