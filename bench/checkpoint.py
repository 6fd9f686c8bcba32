#!/usr/bin/env python3
"""Checkpoint save and restore time and size with QEMU (TCG) and the tiny guest, without Slurm (root not needed).

For each guest size (256 MiB, 2 GiB) and each RAM fill (idle guest; part of its RAM holding random data,
`svmtest.fill`), plain and gzip: boot, then the launcher's own steps (slurm_vm.launcher.qemu_save): save
(stop + migrate to exec:), restore (-incoming defer + migrate-incoming, until running), the state file's
size. The overlay copy is not included (its size is what the guest wrote to its disk).

Usage: bench/checkpoint.py [--sizes 256,2048] [--fill-fraction 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slurm_vm.launcher.qemu_save import load_state, save_state, state_name  # noqa: E402
from slurm_vm.errors import HypervisorError  # noqa: E402
from slurm_vm.launcher.qemu import qmp  # noqa: E402

GUEST_CACHE = os.environ.get("SLURM_VM_TEST_CACHE", "/var/cache/slurm-vm/guests")


def start(tmp: str, tag: str, memory_mib: int, append: str, incoming: bool) -> tuple[subprocess.Popen, str]:
    with open(os.path.join(GUEST_CACHE, "guests.json")) as fh:
        tiny = json.load(fh)["tiny"]
    sock, serial = os.path.join(tmp, f"{tag}.qmp"), os.path.join(tmp, f"{tag}.serial")
    argv = ["qemu-system-x86_64", "-accel", "tcg,tb-size=64", "-machine", "pc", "-cpu", "qemu64", "-m",
            f"{memory_mib}M", "-nodefaults", "-no-user-config", "-S", "-display", "none", "-monitor", "none",
            "-serial", f"file:{serial}", "-qmp", f"unix:{sock},server=on,wait=off", "-kernel", tiny["kernel"],
            "-initrd", tiny["initrd"], "-append", f"{tiny['cmdline']} {append}"]
    proc = subprocess.Popen(argv + (["-incoming", "defer"] if incoming else []))
    deadline = time.monotonic() + 30
    while True:
        try:
            qmp(sock, ("query-status", None))
            return proc, sock
        except Exception:
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


def one(tmp: str, memory_mib: int, fill_mib: int, compress: bool) -> dict:
    append = f"svmtest.fill={fill_mib}" if fill_mib else ""
    proc, sock = start(tmp, "src", memory_mib, append, incoming=False)
    qmp(sock, ("cont", None))
    wait_for(os.path.join(tmp, "src.serial"), "SLURM-VM-TEST ready", 900)
    state = os.path.join(tmp, state_name(compress))
    alive = lambda: proc.poll() is None  # noqa: E731
    t0 = time.monotonic()
    save_state(sock, state, compress, time.monotonic() + 1800, alive)
    saved = time.monotonic() - t0
    quit_qemu(proc, sock)
    t0 = time.monotonic()
    proc, sock = start(tmp, "dst", memory_mib, append, incoming=True)
    load_state(sock, state, compress, time.monotonic() + 1800, lambda: proc.poll() is None)
    qmp(sock, ("cont", None))
    restored = time.monotonic() - t0
    size = os.path.getsize(state)
    quit_qemu(proc, sock)
    os.unlink(state)
    return {"memory_mib": memory_mib, "fill_mib": fill_mib, "compress": compress, "save_s": round(saved, 2),
            "restore_s": round(restored, 2), "state_mib": round(size / 2**20, 1)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="256,2048")
    parser.add_argument("--fill-fraction", type=float, default=0.5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="svm-ckbench-", dir="/var/tmp") as tmp:
        for memory in (int(x) for x in args.sizes.split(",")):
            for fill in (0, int(memory * args.fill_fraction)):
                for compress in (False, True):
                    rows.append(one(tmp, memory, fill, compress))
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| guest RAM | random data in RAM | gzip | save | restore (start to running) | state file |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['memory_mib']} MiB | {r['fill_mib']} MiB | {'yes' if r['compress'] else 'no'} | "
              f"{r['save_s']} s | {r['restore_s']} s | {r['state_mib']} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
