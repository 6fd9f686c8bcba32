"""The node hooks' cache of the parsed admin config, and the state-dir hint the shell entry reads.

Root-only, under /run/slurm-vm/hooks (tmpfs: gone after a reboot), at a path that mirrors the config's
own absolute path, so that two configs on one machine (test nodes) never share an entry:
  /run/slurm-vm/hooks/etc/slurm-vm/config.yaml.pickle     the parsed Config, keyed by the config
      file's identity (device, inode, size, mtime, ctime), the SHA-256 of its bytes and the identity
      of slurm-vm's own config module; anything else (or any doubt) parses the file again;
  /run/slurm-vm/hooks/etc/slurm-vm/config.yaml.state_dir  `state_dir` as written (with `%n`), one line,
      never older than the config: bin/slurm-vm-prolog starts Python when the config is newer.
Every directory and file is root-owned and closed to others; an entry that is not is not trusted.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import stat

CACHE_ROOT = "/run/slurm-vm/hooks"
CACHE_FORMAT = 1
STATE_DIR_SUFFIX = ".state_dir"
PICKLE_SUFFIX = ".pickle"
MAX_CONFIG_BYTES = 1 << 20


def cache_base(config_path: str, root: str = CACHE_ROOT) -> str | None:
    """root + the config's path, for a plain absolute path only (the shell entry's rule too)."""
    if not config_path.startswith("/") or os.path.normpath(config_path) != config_path or "\n" in config_path:
        return None
    if config_path.startswith("//"):
        return None
    return root + config_path


def _code_identity() -> tuple:
    from .. import config as config_module
    from .. import schema
    out = []
    for module in (config_module, schema):
        st = os.stat(module.__file__)
        out.append((module.__file__, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _trusted_fd(path: str) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
        os.close(fd)
        return None
    return fd


def _ensure_dirs(path: str, root: str) -> None:
    """Every directory from root's parent down to `path`, root-owned; root's parent and root itself 0700."""
    from .layout import ensure_root_dir
    top = os.path.dirname(root)
    ensure_root_dir(top, 0o700)
    current = top
    for part in os.path.relpath(path, top).split(os.sep):
        current = os.path.join(current, part)
        ensure_root_dir(current, 0o700)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_config_cached(path: str | None = None, root: str = CACHE_ROOT):
    """load_config(path), through the cache when running as root; writes the state-dir hint."""
    from ..config import config_path, load_config, parse_config
    path = path or config_path()
    base = cache_base(path, root)
    if os.geteuid() != 0 or base is None:
        return load_config(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return load_config(path)   # its error message
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        data = fh.read(MAX_CONFIG_BYTES + 1)
    key = (CACHE_FORMAT, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
           hashlib.sha256(data).hexdigest(), _code_identity())
    config = _read_cached(base + PICKLE_SUFFIX, key)
    fresh = config is None
    if fresh:
        config = parse_config(data, path)
    try:
        _ensure_dirs(os.path.dirname(base), root)
        if fresh:
            _write_atomic(base + PICKLE_SUFFIX, pickle.dumps((key, config), protocol=pickle.HIGHEST_PROTOCOL))
        _write_hint(base + STATE_DIR_SUFFIX, config.state_dir, st.st_mtime_ns)
    except OSError:
        pass   # a cache that cannot be written only costs time; the shell entry then starts Python
    return config


def _read_cached(path: str, key: tuple):
    fd = _trusted_fd(path)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as fh:
        blob = fh.read()
    try:
        cached_key, config = pickle.loads(blob)   # written by root into a root-only directory
    except Exception:   # noqa: BLE001 - any damaged or outdated entry is just parsed again
        return None
    return config if cached_key == key else None


def _write_hint(path: str, state_dir: str, config_mtime_ns: int) -> None:
    if "\n" in state_dir:   # the shell reads one line: without a hint it always starts Python
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    fd = _trusted_fd(path)
    if fd is not None:
        with os.fdopen(fd, "rb") as fh:
            current = fh.read(8192)
            mtime = os.fstat(fh.fileno()).st_mtime_ns
        if current == (state_dir + "\n").encode() and mtime > config_mtime_ns:
            return
    _write_atomic(path, (state_dir + "\n").encode())
