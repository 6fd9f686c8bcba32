"""The node hooks' cache of the parsed admin config, and the state-dir hint the shell entry reads.

Root-only, under /run/slurm-vm/hooks (tmpfs: gone after a reboot), at a path that mirrors the config's
own absolute path, so that two configs on one machine (test nodes) never share an entry:
  /run/slurm-vm/hooks/etc/slurm-vm/config.yaml.pickle     the parsed Config, keyed by the config
      file's identity (device, inode, size, mtime, ctime), the SHA-256 of its bytes and the identity
      of slurm-vm's own config module; anything else (or any doubt) parses the file again;
  /run/slurm-vm/hooks/etc/slurm-vm/config.yaml.settings.json  under the same key, the two settings the
      epilog needs (`state_dir`, `log_file`): the epilog then imports neither YAML nor the config schema;
  /run/slurm-vm/hooks/etc/slurm-vm/config.yaml.state_dir  `state_dir` as written (with `%n`), one line,
      never older than the config: bin/slurm-vm-prolog starts Python when the config is newer.
Every directory and file is root-owned and closed to others; an entry that is not is not trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass

CACHE_ROOT = "/run/slurm-vm/hooks"
CACHE_FORMAT = 1
STATE_DIR_SUFFIX = ".state_dir"
PICKLE_SUFFIX = ".pickle"
SETTINGS_SUFFIX = ".settings.json"
CODE_FILES = ("config.py", "schema.py")   # slurm_vm's modules that shape a parsed Config
MAX_CONFIG_BYTES = 1 << 20


def cache_base(config_path: str, root: str = CACHE_ROOT) -> str | None:
    """root + the config's path, for a plain absolute path only (the shell entry's rule too)."""
    if not config_path.startswith("/") or os.path.normpath(config_path) != config_path or "\n" in config_path:
        return None
    if config_path.startswith("//"):
        return None
    return root + config_path


@dataclass(frozen=True)
class HookSettings:
    """What the epilog needs of the config (duck-typed like Config for those two)."""
    state_dir: str
    log_file: str | None

    def node_state_dir(self, node: str) -> str:
        return self.state_dir.replace("%n", node)


def _code_identity() -> tuple:
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = []
    for name in CODE_FILES:
        st = os.stat(os.path.join(package, name))
        out.append((name, st.st_size, st.st_mtime_ns))
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


def _read_config(path: str) -> tuple[bytes, os.stat_result] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        return fh.read(MAX_CONFIG_BYTES + 1), os.fstat(fh.fileno())


def _key(data: bytes, st: os.stat_result) -> str:
    return json.dumps([CACHE_FORMAT, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                       hashlib.sha256(data).hexdigest(), _code_identity()])


def load_config_cached(path: str | None = None, root: str = CACHE_ROOT):
    """load_config(path), through the cache when running as root; writes the state-dir hint."""
    from ..config import config_path, load_config
    path = path or config_path()
    base = cache_base(path, root)
    read = _read_config(path) if os.geteuid() == 0 and base is not None else None
    if read is None:
        return load_config(path)   # not root, an unusual path, or its error message
    data, st = read
    key = _key(data, st)
    config = _read_cached(base + PICKLE_SUFFIX, key)
    if config is None:
        config = _parse_and_store(path, base, root, data, key)
    _store_hint(base, root, config.state_dir, st.st_mtime_ns)
    return config


def load_hook_settings(path: str | None = None, root: str = CACHE_ROOT) -> HookSettings:
    """state_dir and log_file, from the cache without importing the config schema when it is fresh."""
    from ..limits import CONFIG_ENV, DEFAULT_CONFIG_PATH
    path = path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH
    base = cache_base(path, root)
    read = _read_config(path) if os.geteuid() == 0 and base is not None else None
    if read is not None:
        data, st = read
        fd = _trusted_fd(base + SETTINGS_SUFFIX)
        if fd is not None:
            with os.fdopen(fd, "rb") as fh:
                try:
                    stored = json.loads(fh.read(1 << 16))
                except ValueError:
                    stored = None
            if isinstance(stored, dict) and stored.get("key") == _key(data, st):
                settings = HookSettings(str(stored["state_dir"]), stored.get("log_file"))
                _store_hint(base, root, settings.state_dir, st.st_mtime_ns)
                return settings
    config = load_config_cached(path, root)
    return HookSettings(config.state_dir, config.log_file)


def _parse_and_store(path: str, base: str, root: str, data: bytes, key: str):
    from ..config import parse_config
    config = parse_config(data, path)
    settings = {"key": key, "state_dir": config.state_dir, "log_file": config.log_file}
    try:
        _ensure_dirs(os.path.dirname(base), root)
        import pickle   # here and in _read_cached: the epilog's settings path does not need it
        _write_atomic(base + PICKLE_SUFFIX, pickle.dumps((key, config), protocol=pickle.HIGHEST_PROTOCOL))
        _write_atomic(base + SETTINGS_SUFFIX, json.dumps(settings).encode())
    except OSError:
        pass   # a cache that cannot be written only costs time
    return config


def _store_hint(base: str, root: str, state_dir: str, config_mtime_ns: int) -> None:
    try:
        try:
            _write_hint(base + STATE_DIR_SUFFIX, state_dir, config_mtime_ns)
        except FileNotFoundError:
            _ensure_dirs(os.path.dirname(base), root)
            _write_hint(base + STATE_DIR_SUFFIX, state_dir, config_mtime_ns)
    except OSError:
        pass   # without a hint the shell entry starts Python: slower, never wrong


def _read_cached(path: str, key: str):
    fd = _trusted_fd(path)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as fh:
        blob = fh.read()
    import pickle
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
