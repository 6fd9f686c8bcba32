"""Saving and restoring a QEMU guest over QMP, with commands that QEMU 7.2 (bookworm) and 10 (trixie) share.

Save: `stop`, then `migrate` to `fd:` (7.2 has no `file:` URI): the launcher opens the state file and passes QEMU
either that file (plain) or a pipe into a compressor it started (`zstd`), and hashes the file while it grows, so
that the sha256 pass overlaps with the save; then waits for `query-migrate` to say completed, for the compressor
to exit, and fsyncs. QEMU flushes the guest's disks when it stops the guest and inactivates them when the
migration completes, so the overlay is then consistent and can be copied. `checkpoint.compress: auto` compresses
only when a sample of the guest's RAM (pmemsave, zero pages left out as QEMU skips them) compresses.
Restore: QEMU started with `-incoming defer`, then `migrate-incoming` from `fd:` (the file, or a pipe from
`zstd -d` / `gzip -d` for older checkpoints, chosen by the state file's name), until completed, `cont`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import time

from ..errors import HypervisorError
from .qemu import qmp, qmp_fd
from ..checkpoint.manifest import (CHUNK, STATE_NAME, STATE_NAME_GZ, STATE_NAME_ZST, CheckpointRefused,
                                   FileEntry)

MAX_BANDWIDTH = 1 << 40          # bytes/s: the guest is stopped, nothing to throttle for
POLL = 0.1
FD_NAME = "slurm-vm-state"
COMPRESSORS = {"zstd": ["zstd", "-q", "-1", "-T0", "-c"]}
DECOMPRESSORS = {STATE_NAME_ZST: ["zstd", "-q", "-d", "-c"], STATE_NAME_GZ: ["gzip", "-d", "-c"]}
STATE_NAMES = {"none": STATE_NAME, "zstd": STATE_NAME_ZST}
SAMPLES = 32                     # pieces of guest RAM looked at by `auto`
SAMPLE_BYTES = 64 * 1024
SAMPLE_SPAN = 3 << 30            # below the PCI hole of the pc machine: plain RAM
PAGE = 4096
COMPRESSIBLE = 0.8               # `auto` compresses when the sample shrinks below this fraction


def state_name(mode: str) -> str:
    return STATE_NAMES[mode]


def sample_offsets(memory_bytes: int) -> list[int]:
    """Guest-physical addresses of the pieces `auto` samples: spread over low RAM, above the first MiB."""
    span = min(memory_bytes, SAMPLE_SPAN) - (1 << 20) - SAMPLE_BYTES
    if span <= 0:
        return []
    step = span // SAMPLES
    return [(1 << 20) + i * step - (i * step) % PAGE for i in range(SAMPLES)]


def nonzero_pages(data: bytes) -> bytes:
    """What QEMU would write of `data`: its pages that are not all zero (QEMU sends zero pages as a flag)."""
    zero = bytes(PAGE)
    return b"".join(data[i:i + PAGE] for i in range(0, len(data), PAGE) if data[i:i + PAGE] != zero)


def worth_compressing(sample: bytes, compressed_size: int) -> bool:
    """An empty sample (an idle guest: QEMU writes little) compresses too; else it must shrink enough."""
    return not sample or compressed_size < COMPRESSIBLE * len(sample)


def choose_mode(qmp_path: str, directory: str, mode: str) -> str:
    """`auto`: zstd if it is installed and a sample of the paused guest's RAM compresses, else none."""
    if mode != "auto":
        return mode
    if shutil.which(COMPRESSORS["zstd"][0]) is None:
        return "none"
    (summary,) = qmp(qmp_path, ("query-memory-size-summary", None))
    offsets = sample_offsets(int(summary["base-memory"]))
    names = [os.path.join(directory, f".sample-{i}") for i in range(len(offsets))]
    try:
        qmp(qmp_path, *[("pmemsave", {"val": off, "size": SAMPLE_BYTES, "filename": name})
                        for off, name in zip(offsets, names)])
        sample = b"".join(nonzero_pages(_read(name)) for name in names)
    finally:
        for name in names:
            _unlink(name)
    if not sample:
        return "zstd"
    out = subprocess.run(COMPRESSORS["zstd"], input=sample, capture_output=True, check=False, timeout=60)
    return "zstd" if out.returncode == 0 and worth_compressing(sample, len(out.stdout)) else "none"


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class GrowingFileDigest:
    """sha256 of a file another process is writing, read as it grows (from the page cache), in a thread."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.digest, self.size = hashlib.sha256(), 0
        self.written = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            chunk = os.read(self.fd, CHUNK)
            if chunk:
                self.digest.update(chunk)
                self.size += len(chunk)
            elif self.written.is_set():
                while chunk := os.read(self.fd, CHUNK):    # the writer is done: up to the real end
                    self.digest.update(chunk)
                    self.size += len(chunk)
                return
            else:
                time.sleep(0.01)

    def finish(self) -> tuple[int, str]:
        """The writer has finished: (size, hex digest) of the whole file."""
        self.written.set()
        self.thread.join()
        os.close(self.fd)
        return self.size, self.digest.hexdigest()


def qemu_version(qmp_path: str) -> str:
    (info,) = qmp(qmp_path, ("query-version", None))
    q = info["qemu"]
    return f"{q['major']}.{q['minor']}.{q['micro']}"


def wait_migration(qmp_path: str, deadline: float, alive) -> None:
    while True:
        (info,) = qmp(qmp_path, ("query-migrate", None))
        status = info.get("status", "none")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise HypervisorError(f"migration {status}: {info.get('error-desc', 'no reason given')}")
        if not alive():
            raise HypervisorError("the hypervisor exited during the migration")
        if time.monotonic() > deadline:
            raise HypervisorError(f"migration still {status} at the deadline")
        time.sleep(POLL)


def save_state(qmp_path: str, directory: str, mode: str, deadline: float, alive) -> FileEntry:
    """Pause the guest and write its RAM and device state into `directory`. The guest stays paused."""
    qmp(qmp_path, ("stop", None))
    return write_state(qmp_path, directory, mode, deadline, alive)


def write_state(qmp_path: str, directory: str, mode: str, deadline: float, alive) -> FileEntry:
    """The guest is paused (`stop`): write its RAM and device state into `directory` (mode: none, zstd or
    auto), private and fsynced, hashed while it is written."""
    mode = choose_mode(qmp_path, directory, mode)
    name = state_name(mode)
    out = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                  os.O_CLOEXEC, 0o600)
    follower = GrowingFileDigest(os.path.join(directory, name))
    compressor = None
    try:
        into, compressor = _through(COMPRESSORS.get(mode), out, qemu_writes=True)
        try:
            qmp_fd(qmp_path, into, ("getfd", {"fdname": FD_NAME}),
                   ("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH}), ("migrate", {"uri": f"fd:{FD_NAME}"}))
        finally:
            if into != out:
                os.close(into)       # QEMU holds its own copy, closed when the migration ends
        wait_migration(qmp_path, deadline, alive)
        if compressor is not None:
            _wait_compressor(compressor, deadline)
            compressor = None
        os.fsync(out)
    finally:
        if compressor is not None:
            compressor.kill()
            compressor.wait()
        os.close(out)
        size, digest = follower.finish()
    return FileEntry(name, size, digest)


def _through(argv: list[str] | None, fd: int, qemu_writes: bool) -> tuple[int, subprocess.Popen | None]:
    """The descriptor QEMU gets: `fd` itself without a filter, else its end of a pipe through `argv` (a compressor
    QEMU writes into, whose output goes to `fd`; or a decompressor reading `fd` that QEMU reads from)."""
    if argv is None:
        return fd, None
    read, write = os.pipe2(os.O_CLOEXEC)
    qemu_end, child_end = (write, read) if qemu_writes else (read, write)
    try:
        proc = _spawn(argv, child_end, fd) if qemu_writes else _spawn(argv, fd, child_end)
    except BaseException:
        os.close(qemu_end)
        raise
    finally:
        os.close(child_end)
    return qemu_end, proc


def _spawn(argv: list[str], stdin: int, stdout: int) -> subprocess.Popen:
    try:
        return subprocess.Popen(argv, stdin=stdin, stdout=stdout)
    except OSError as exc:
        raise HypervisorError(f"cannot run {argv[0]} for the checkpoint: {exc.strerror}") from None


def _wait_compressor(proc: subprocess.Popen, deadline: float) -> None:
    try:
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
    except subprocess.TimeoutExpired:
        raise HypervisorError(f"{proc.args[0]} did not finish writing the state by the deadline") from None
    if code != 0:
        raise HypervisorError(f"{proc.args[0]} failed writing the state (exit {code})")


class QemuSnapshotter:
    """The Snapshotter (vmm.py) of a running QEMU, over QMP."""
    vmm = "qemu"
    can_compress = True
    disks_settled_when_paused = True   # `stop` drains and flushes every disk; nothing writes until `cont`
    keeps_running = True       # `cont` after a completed migration re-activates the disks

    def __init__(self, qmp_path: str, alive):
        self.qmp_path, self.alive = qmp_path, alive

    @classmethod
    def of(cls, runtime, alive) -> "QemuSnapshotter":
        return cls(runtime.qmp_path, alive)

    def version(self) -> str:
        return qemu_version(self.qmp_path)

    def pause(self) -> None:
        qmp(self.qmp_path, ("stop", None))

    def save(self, directory: str, compress: str, deadline: float) -> list[FileEntry]:
        """One migration stream; QEMU flushes and inactivates the disks when it completes."""
        return [write_state(self.qmp_path, directory, compress, deadline, self.alive)]

    def resume(self) -> None:
        """Also after a failed or cancelled migration: the source can run again."""
        qmp(self.qmp_path, ("cont", None))


def load_state(qmp_path: str, path: str, deadline: float, alive) -> None:
    """QEMU was started with `-incoming defer` (and -S): load the state file `path` (plain, zstd or gzip, by its
    name); the caller resumes with `cont`."""
    name = os.path.basename(path)
    if name != STATE_NAME and name not in DECOMPRESSORS:
        raise CheckpointRefused(f"{name} is not a QEMU state file slurm-vm writes")
    src = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    decompressor = None
    try:
        into, decompressor = _through(DECOMPRESSORS.get(name), src, qemu_writes=False)
        try:
            qmp_fd(qmp_path, into, ("getfd", {"fdname": FD_NAME}), ("migrate-incoming", {"uri": f"fd:{FD_NAME}"}))
        finally:
            if into != src:
                os.close(into)
        wait_migration(qmp_path, deadline, alive)
    except HypervisorError as exc:
        raise CheckpointRefused(f"QEMU could not load the saved state: {exc}") from None
    finally:
        os.close(src)
        if decompressor is not None:
            try:
                decompressor.wait(timeout=10)
            except subprocess.TimeoutExpired:
                decompressor.kill()
                decompressor.wait()
