#!/usr/bin/env python3
"""Checkpoint save and restore with QEMU (TCG) and the tiny guest, each beside the same run's storage floor.

For each guest size and RAM fill (idle guest; part of its RAM holding random data, `svmtest.fill`) and each
compression mode: boot with a qcow2 overlay disk, then the launcher's own steps:
- save: `stop` (snap.pause) + flow.save_files: the state file(s) (migration, fsync, sha256) and the overlay copy;
- restore: the sha256 check of every file (as find_for_restore does), the overlay put back in place, QEMU started
  with `-incoming defer`, the state loaded, `cont` (process start included).
Floors, measured right after each save/restore in the same directory (so the machine's load hits both alike):
- write floor: the same number of bytes (state files + overlay) written to a new file there, with fsync;
- read floor: the same number of bytes read back from a file there whose pages were dropped from the cache.
The checkpoint's files are dropped from the page cache (posix_fadvise DONTNEED, after their fsync) before the
restore: a restore after a requeue reads them from the storage. The load average is printed with every row.

Usage: bench/checkpoint.py [--sizes 256,2048] [--fill-fraction 0.5] [--modes none,auto,zstd] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slurm_vm.checkpoint.files import restore_file  # noqa: E402
from slurm_vm.checkpoint.flow import save_files  # noqa: E402
from slurm_vm.checkpoint.manifest import sha256_of  # noqa: E402
from slurm_vm.errors import HypervisorError  # noqa: E402
from slurm_vm.launcher.qemu import qmp  # noqa: E402
from slurm_vm.launcher.qemu_save import QemuSnapshotter, load_state  # noqa: E402

GUEST_CACHE = os.environ.get("SLURM_VM_TEST_CACHE", "/var/cache/slurm-vm/guests")
CHUNK = 1 << 20


def start(tmp: str, tag: str, memory_mib: int, append: str, disk: str,
          incoming: bool) -> tuple[subprocess.Popen, str]:
    with open(os.path.join(GUEST_CACHE, "guests.json")) as fh:
        tiny = json.load(fh)["tiny"]
    sock, serial = os.path.join(tmp, f"{tag}.qmp"), os.path.join(tmp, f"{tag}.serial")
    argv = ["qemu-system-x86_64", "-accel", "tcg,tb-size=64", "-machine", "pc", "-cpu", "qemu64", "-m",
            f"{memory_mib}M", "-nodefaults", "-no-user-config", "-S", "-display", "none", "-monitor", "none",
            "-serial", f"file:{serial}", "-qmp", f"unix:{sock},server=on,wait=off", "-kernel", tiny["kernel"],
            "-initrd", tiny["initrd"], "-append", f"{tiny['cmdline']} {append}",
            "-drive", f"file={disk},if=virtio,format=qcow2,cache=none"]
    proc = subprocess.Popen(argv + (["-incoming", "defer"] if incoming else []))
    deadline = time.monotonic() + 30
    while True:
        try:
            qmp(sock, ("query-status", None))
            return proc, sock
        except HypervisorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def quit_qemu(proc: subprocess.Popen, sock: str) -> None:
    try:
        qmp(sock, ("quit", None))
    except HypervisorError:
        pass            # QEMU may close the socket before it answers
    proc.wait(timeout=30)


def wait_for(path: str, marker: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and marker in open(path, errors="replace").read():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{marker!r} not seen in {path}")


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_floor(directory: str, size: int) -> float:
    """Write `size` bytes (random, so that nothing below compresses them) to a new file there, with fsync."""
    block = os.urandom(CHUNK)
    path = os.path.join(directory, "floor.bin")
    t0 = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        left = size
        while left > 0:
            left -= os.write(fd, block[:min(left, CHUNK)])
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.monotonic() - t0


def read_floor(directory: str) -> float:
    path = os.path.join(directory, "floor.bin")
    drop_cache(path)
    t0 = time.monotonic()
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, CHUNK):
            pass
    finally:
        os.close(fd)
    elapsed = time.monotonic() - t0
    os.unlink(path)
    return elapsed


def one(tmp: str, memory_mib: int, fill_mib: int, mode: str) -> dict:
    append = f"svmtest.fill={fill_mib}" if fill_mib else ""
    disk = os.path.join(tmp, "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "1G"], check=True)
    proc, sock = start(tmp, "src", memory_mib, append, disk, incoming=False)
    qmp(sock, ("cont", None))
    wait_for(os.path.join(tmp, "src.serial"), "SLURM-VM-TEST ready", 900)
    ckpt = os.path.join(tmp, "ckpt")
    os.mkdir(ckpt, 0o700)
    snap = QemuSnapshotter(sock, lambda: proc.poll() is None)
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    snap.pause()
    states, overlay = save_files(snap, ckpt, mode, disk)
    saved = time.monotonic() - t0
    quit_qemu(proc, sock)
    size = sum(e.size for e in states) + overlay.size
    floor_w = write_floor(ckpt, size)
    floor_r = read_floor(ckpt)
    for entry in (*states, overlay):
        drop_cache(os.path.join(ckpt, entry.name))
    os.unlink(disk)
    t0 = time.monotonic()
    for entry in (*states, overlay):
        if sha256_of(os.path.join(ckpt, entry.name))[1] != entry.sha256:
            raise RuntimeError(f"{entry.name}: sha256 differs")
    restore_file(os.path.join(ckpt, overlay.name), disk)
    proc, sock = start(tmp, "dst", memory_mib, append, disk, incoming=True)
    load_state(sock, os.path.join(ckpt, states[0].name), time.monotonic() + 1800,
               lambda: proc.poll() is None)
    qmp(sock, ("cont", None))
    restored = time.monotonic() - t0
    quit_qemu(proc, sock)
    shutil.rmtree(ckpt)
    os.unlink(disk)
    return {"memory_mib": memory_mib, "fill_mib": fill_mib, "mode": mode, "written_mib": round(size / 2**20, 1),
            "save_s": round(saved, 2), "write_floor_s": round(floor_w, 2), "restore_s": round(restored, 2),
            "read_floor_s": round(floor_r, 2), "load": round((load_before + os.getloadavg()[0]) / 2, 1)}


def ratio(a: float, b: float) -> str:
    """Left out under 50 ms of floor: fixed costs (QMP round trips, QEMU's start) dominate there."""
    return f"{a / b:.2f}x" if b >= 0.05 else "-"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="256,2048")
    parser.add_argument("--fill-fraction", type=float, default=0.5)
    parser.add_argument("--modes", default="none,auto,zstd")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; each round runs every case once")
    parser.add_argument("--dir", default="/var/tmp", help="where the checkpoints and floor files are written")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="svm-ckbench-", dir=args.dir) as tmp:
        for _ in range(args.repeat):
            for memory in (int(x) for x in args.sizes.split(",")):
                for fill in (0, int(memory * args.fill_fraction)):
                    for mode in args.modes.split(","):      # modes interleaved: load hits each alike
                        rows.append(one(tmp, memory, fill, mode))
                        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| guest RAM | random data in RAM | compress | written | save | write floor | save/floor | "
          "restore | read floor | restore/floor | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['memory_mib']} MiB | {r['fill_mib']} MiB | {r['mode']} | {r['written_mib']} MiB | "
              f"{r['save_s']} s | {r['write_floor_s']} s | {ratio(r['save_s'], r['write_floor_s'])} | "
              f"{r['restore_s']} s | {r['read_floor_s']} s | {ratio(r['restore_s'], r['read_floor_s'])} | "
              f"{r['load']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
