"""A small ISO 9660 writer for cloud-init seeds: one root directory of small files, Rock Ridge and Joliet names.

Written from ECMA-119 (ISO 9660), IEEE P1282 / RRIP 1.09 (Rock Ridge: the SP, PX and NM entries) and the
Joliet specification (UCS-2 names, escape sequence %/E). It replaces pycdlib on the prolog's path, whose
import and build cost ~50 ms per VM job. Layout (2048-byte sectors):
  0-15 system area | 16 primary volume descriptor | 17 Joliet supplementary descriptor | 18 terminator |
  19/20 ISO path tables (L, M) | 21/22 Joliet path tables | 23 ISO root directory | 24 Joliet root |
  25 the Rock Ridge ER entry (continuation area of the root's "." record) |
  26.. file data, each file in its own run of sectors (shared by both directory trees).
"""

from __future__ import annotations

import struct
import time

SECTOR = 2048
PVD, SVD, TERMINATOR = 16, 17, 18
L_TABLE, M_TABLE, JL_TABLE, JM_TABLE = 19, 20, 21, 22
ROOT, JROOT, CONTINUATION, FIRST_FILE = 23, 24, 25, 26
PATH_TABLE_SIZE = 10
MAX_FILES = 16   # a seed has four; keeps each root directory inside one sector


def _both16(value: int) -> bytes:
    return struct.pack("<H", value) + struct.pack(">H", value)


def _both32(value: int) -> bytes:
    return struct.pack("<I", value) + struct.pack(">I", value)


def _dr_date(t: time.struct_time) -> bytes:
    return bytes([t.tm_year - 1900, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, 0])


def _vd_date(t: time.struct_time) -> bytes:
    return time.strftime("%Y%m%d%H%M%S00", t).encode() + b"\0"


def _record(extent: int, length: int, ident: bytes, directory: bool, t: time.struct_time,
            system_use: bytes = b"") -> bytes:
    pad = b"\0" if len(ident) % 2 == 0 else b""
    body = (_both32(extent) + _both32(length) + _dr_date(t) + bytes([2 if directory else 0, 0, 0]) + _both16(1)
            + bytes([len(ident)]) + ident + pad + system_use)
    record = bytes([0]) + body            # extended attribute record length 0
    if len(record) % 2 == 0:              # with its length byte, a record has an even length
        record += b"\0"
    record = bytes([len(record) + 1]) + record
    if len(record) > 255:
        raise ValueError("directory record too long")
    return record


def _px(mode: int) -> bytes:
    """RRIP 1.09 PX: mode, links, uid, gid (root)."""
    return b"PX" + bytes([36, 1]) + _both32(mode) + _both32(1 if mode & 0o100000 else 2) + _both32(0) + _both32(0)


def _nm(name: bytes) -> bytes:
    return b"NM" + bytes([5 + len(name), 1, 0]) + name


SP = b"SP" + bytes([7, 1, 0xBE, 0xEF, 0])
RRIP_ID = b"RRIP_1991A"
RRIP_DESCRIPTION = b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS"
RRIP_SOURCE = (b"PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY "
               b"VOLUME DESCRIPTOR FOR CONTACT INFORMATION.")
ER = (b"ER" + bytes([8 + len(RRIP_ID) + len(RRIP_DESCRIPTION) + len(RRIP_SOURCE), 1, len(RRIP_ID),
                     len(RRIP_DESCRIPTION), len(RRIP_SOURCE), 1]) + RRIP_ID + RRIP_DESCRIPTION + RRIP_SOURCE)
CE = b"CE" + bytes([28, 1]) + _both32(CONTINUATION) + _both32(0) + _both32(len(ER))


def _iso_name(name: str, used: set[bytes]) -> bytes:
    """An 8.3 d-character name with version (the ISO 9660 name; readers use the Rock Ridge/Joliet one)."""
    stem = "".join(c if c.isascii() and c.isalnum() else "_" for c in name.upper())[:8] or "FILE"
    candidate, n = stem, 0
    while f"{candidate}.;1".encode() in used:
        n += 1
        candidate = f"{stem[:8 - len(str(n))]}{n}"
    ident = f"{candidate}.;1".encode()
    used.add(ident)
    return ident


def _volume_descriptor(kind: int, volume_id: bytes, space: int, table_l: int, table_m: int, root: bytes,
                       t: time.struct_time, joliet: bool) -> bytes:
    def text(value: str, size: int) -> bytes:
        if joliet:   # UCS-2 big-endian, padded with UCS-2 spaces
            return (value.encode("utf-16-be") + b"\0 " * size)[:size]
        return value.encode().ljust(size, b" ")

    def blank(size: int) -> bytes:
        return text("", size)

    escapes = b"%/E".ljust(32, b"\0") if joliet else bytes(32)
    vd = (bytes([kind]) + b"CD001" + bytes([1, 0]) + blank(32) + volume_id + bytes(8) + _both32(space) + escapes
          + _both16(1) + _both16(1) + _both16(SECTOR) + _both32(PATH_TABLE_SIZE)
          + struct.pack("<I", table_l) + bytes(4) + struct.pack(">I", table_m) + bytes(4) + root
          + blank(128) + blank(128) + blank(128) + text("SLURM-VM", 128) + blank(37) + blank(37) + blank(37)
          + _vd_date(t) + _vd_date(t) + b"0" * 16 + b"\0" + _vd_date(t) + bytes([1, 0]))
    return vd.ljust(SECTOR, b"\0")


def _path_table(root_extent: int, big_endian: bool) -> bytes:
    fmt = ">IH" if big_endian else "<IH"
    return bytes([1, 0]) + struct.pack(fmt, root_extent, 1) + b"\0\0"


def build_iso(volume_id: str, files: list[tuple[str, bytes]]) -> bytes:
    """An image holding `files` (name, data) in its root directory, under `volume_id` (at most 32 d-characters)."""
    if not files or len(files) > MAX_FILES:
        raise ValueError(f"between 1 and {MAX_FILES} files")
    t = time.gmtime()
    used: set[bytes] = set()
    entries = []
    extent = FIRST_FILE
    for name, data in files:
        entries.append((_iso_name(name, used), name, data, extent))
        extent += max(1, -(-len(data) // SECTOR))
    space = extent
    vol = volume_id.encode().ljust(32, b" ")
    jvol = volume_id.encode("utf-16-be").ljust(32, b"\0")

    def root_record(extent_: int, system_use: bytes = b"") -> bytes:
        return _record(extent_, SECTOR, b"\0", True, t, system_use)

    iso_dir = root_record(ROOT, SP + CE + _px(0o40555)) + _record(ROOT, SECTOR, b"\1", True, t, _px(0o40555))
    for ident, name, data, ext in sorted(entries):
        iso_dir += _record(ext, len(data), ident, False, t, _px(0o100444) + _nm(name.encode()))
    joliet_dir = root_record(JROOT) + _record(JROOT, SECTOR, b"\1", True, t)
    for _, name, data, ext in sorted(entries, key=lambda e: e[1].encode("utf-16-be")):
        joliet_dir += _record(ext, len(data), name.encode("utf-16-be"), False, t)
    if len(iso_dir) > SECTOR or len(joliet_dir) > SECTOR:
        raise ValueError("too many files for one directory sector")

    out = bytearray(space * SECTOR)
    out[PVD * SECTOR:(PVD + 1) * SECTOR] = _volume_descriptor(1, vol, space, L_TABLE, M_TABLE,
                                                              root_record(ROOT), t, False)
    out[SVD * SECTOR:(SVD + 1) * SECTOR] = _volume_descriptor(2, jvol, space, JL_TABLE, JM_TABLE,
                                                              root_record(JROOT), t, True)
    out[TERMINATOR * SECTOR:TERMINATOR * SECTOR + 7] = b"\xffCD001\x01"
    for sector, root, big in ((L_TABLE, ROOT, False), (M_TABLE, ROOT, True), (JL_TABLE, JROOT, False),
                              (JM_TABLE, JROOT, True)):
        out[sector * SECTOR:sector * SECTOR + PATH_TABLE_SIZE] = _path_table(root, big)
    out[ROOT * SECTOR:ROOT * SECTOR + len(iso_dir)] = iso_dir
    out[JROOT * SECTOR:JROOT * SECTOR + len(joliet_dir)] = joliet_dir
    out[CONTINUATION * SECTOR:CONTINUATION * SECTOR + len(ER)] = ER
    for _, _, data, ext in entries:
        out[ext * SECTOR:ext * SECTOR + len(data)] = data
    return bytes(out)
