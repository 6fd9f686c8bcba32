"""A node-local cache of the admins' base images (never users' images): VMs read local disk instead of the shared
path the admins' store lives on.

```
<cache dir>/                 root 0755 (node-local)
  <key>.img                  root 0644: a byte-for-byte copy of a base image (QEMU reads it as the job's user)
  <key>.json                 root 0644: its source, the source's size and mtime, the copy's SHA-256, and the
                             copy's inode, size, mtime and ctime when that SHA-256 was last verified
  .<key>.lock                the fill lock (flock): concurrent jobs wait for one fill
  .<key>.fill-*              a fill in progress
```

The key is the SHA-256 of the source's path, size and mtime: a base image replaced by the admins (a new mtime)
is a new entry; the old one ages out. A fill copies the source while hashing it, then reads the copy back and
hashes it again: the two must agree. At use an entry is trusted when its inode, size, mtime and ctime are what
they were when it was last verified (any write to it changes its ctime); else it is verified again in full and,
when damaged, filled again. Least-recently-used entries are removed after a fill until the cache is within its
size limit (the entry just used is kept; a running VM keeps reading an evicted entry through its open file).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass

from ..errors import NodeError

CHUNK = 4 << 20
LOCK_TIMEOUT = 60.0


@dataclass(frozen=True)
class CacheResult:
    path: str
    filled: bool          # this call copied the source (False: the entry was there and sound)
    refetched: bool       # an entry was there but damaged, and was filled again
    evicted: tuple[str, ...] = ()


def entry_key(source: str, st: os.stat_result) -> str:
    return hashlib.sha256(f"{source}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:40]


def _paths(cache_dir: str, key: str) -> tuple[str, str, str]:
    return (os.path.join(cache_dir, f"{key}.img"), os.path.join(cache_dir, f"{key}.json"),
            os.path.join(cache_dir, f".{key}.lock"))


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_meta(meta_path: str) -> dict | None:
    try:
        with open(meta_path) as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _write_meta(meta_path: str, meta: dict) -> None:
    tmp = f"{meta_path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(meta, fh, sort_keys=True)
    os.chmod(tmp, 0o644)
    os.rename(tmp, meta_path)


def entry_is_sound(entry: str, meta: dict | None) -> bool:
    """The quick check, then (an entry touched since its last verification) the full one; updates the stamp."""
    if meta is None:
        return False
    try:
        st = os.stat(entry)
    except FileNotFoundError:
        return False
    if st.st_size != meta.get("size"):
        return False
    if _stamp(st) == meta.get("verified"):
        return True
    if sha256_of(entry) != meta.get("sha256"):
        return False
    meta["verified"] = _stamp(os.stat(entry))
    return True


def _lock(lock_path: str, timeout: float) -> int:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        if time.monotonic() > deadline:
            os.close(fd)
            raise NodeError(f"the image cache entry {lock_path} stayed locked (another fill) for {timeout:.0f}s")
        time.sleep(0.1)


def _fill(source: str, cache_dir: str, key: str, entry: str, deadline: float | None = None) -> str:
    """Copy `source` to `entry`, hashing on the way in and again from the copy; the SHA-256."""
    tmp = os.path.join(cache_dir, f".{key}.fill-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                dst.write(chunk)
                if deadline is not None and time.monotonic() > deadline:
                    raise NodeError(f"copying {source} into the image cache takes too long for a prolog")
            dst.flush()
            os.fsync(dst.fileno())
        if sha256_of(tmp) != digest.hexdigest():
            raise NodeError(f"the copy of {source} in the image cache does not match what was read")
        os.chmod(tmp, 0o644)
        os.rename(tmp, entry)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return digest.hexdigest()


def ensure_cached(source: str, cache_dir: str, max_size: int, lock_timeout: float = LOCK_TIMEOUT,
                  deadline: float | None = None) -> CacheResult:
    """The cached copy of the admin's base image `source` (filled, or verified and refilled, as needed)."""
    os.makedirs(cache_dir, mode=0o755, exist_ok=True)
    try:
        st = os.stat(source)
    except OSError as exc:
        raise NodeError(f"base image {source}: {exc.strerror}") from None
    key = entry_key(source, st)
    entry, meta_path, lock_path = _paths(cache_dir, key)
    fd = _lock(lock_path, lock_timeout)
    try:
        meta = _read_meta(meta_path)
        had_entry = meta is not None or os.path.exists(entry)
        if entry_is_sound(entry, meta):
            assert meta is not None
            meta["last_used"] = time.time()
            _write_meta(meta_path, meta)
            return CacheResult(entry, filled=False, refetched=False, evicted=tuple(evict(cache_dir, max_size, key)))
        sha = _fill(source, cache_dir, key, entry, deadline)
        _write_meta(meta_path, {"source": source, "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns,
                                "size": st.st_size, "sha256": sha, "verified": _stamp(os.stat(entry)),
                                "last_used": time.time()})
    finally:
        os.close(fd)
    return CacheResult(entry, filled=True, refetched=had_entry, evicted=tuple(evict(cache_dir, max_size, key)))


def entries(cache_dir: str) -> list[tuple[str, dict | None, int]]:
    """(key, meta, bytes on disk) of every entry."""
    try:
        names = os.listdir(cache_dir)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if name.endswith(".img") and not name.startswith("."):
            key = name[:-4]
            entry, meta_path, _ = _paths(cache_dir, key)
            try:
                size = os.stat(entry).st_blocks * 512
            except FileNotFoundError:
                continue
            out.append((key, _read_meta(meta_path), size))
    return out


def evict(cache_dir: str, max_size: int, keep: str) -> list[str]:
    """Remove least-recently-used entries (never `keep`, never one being filled) until within `max_size`."""
    found = sorted(entries(cache_dir), key=lambda e: (e[1] or {}).get("last_used", 0))
    total = sum(size for _, _, size in found)
    removed = []
    for key, _, size in found:
        if total <= max_size:
            break
        if key == keep:
            continue
        entry, meta_path, lock_path = _paths(cache_dir, key)
        try:
            fd = _lock(lock_path, 0)
        except NodeError:
            continue          # being filled or checked right now
        try:
            for path in (entry, meta_path):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        finally:
            os.close(fd)
        total -= size
        removed.append(key)
    return removed


def check_cache(cache_dir: str, max_size: int) -> list[str]:
    """`node doctor`: each damaged entry (verified in full) and a cache above its limit, as lines."""
    problems = []
    total = 0
    for key, meta, size in entries(cache_dir):
        total += size
        entry = _paths(cache_dir, key)[0]
        if meta is None or sha256_of(entry) != meta.get("sha256"):
            problems.append(f"image cache entry {entry} is damaged (its SHA-256 differs): the next job refills it")
    if total > max_size:
        problems.append(f"image cache {cache_dir} holds {total >> 20} MiB, above its limit of {max_size >> 20} MiB")
    return problems


def remove_damaged(cache_dir: str) -> list[str]:
    """`node doctor --fix`: remove every entry whose copy no longer has its SHA-256 (the next job refills it)."""
    removed = []
    for key, meta, _ in entries(cache_dir):
        entry, meta_path, lock_path = _paths(cache_dir, key)
        try:
            fd = _lock(lock_path, 0)
        except NodeError:
            continue
        try:
            if meta is None or sha256_of(entry) != meta.get("sha256"):
                for path in (entry, meta_path):
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                removed.append(key)
        finally:
            os.close(fd)
    return removed
