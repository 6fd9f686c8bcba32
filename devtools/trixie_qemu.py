"""QEMU 10 (Debian trixie) on the bookworm host, for tests that compare it with the host's QEMU 7.2.

The 24.11 test-cluster flavour's rootfs (devtools.testcluster.ensure_rootfs) has trixie's qemu-system-x86 and
qemu-utils; every VM of that flavour runs them, inside the chroot. Outside a cluster (tests/checkpoint/
test_qemu_launcher.py) the same binary runs on the host through the rootfs's own dynamic loader and libraries,
with its own firmware (-L) and module directory: no chroot, so the launcher's paths (run dir, kernel,
checkpoint dir) are the host's. Processes QEMU starts itself (`exec:` migration: /bin/sh, cat, gzip) are the
host's, as on a real node.
"""

from __future__ import annotations

import os
import shlex
import subprocess

from devtools.testcluster import ensure_rootfs

LIBS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")


def qemu_wrapper(directory: str, root: str | None = None) -> str:
    """Write `qemu-system-x86_64-trixie` into directory (world-executable) and return its path."""
    root = root or ensure_rootfs(None, [])
    q = shlex.quote
    libs = ":".join(os.path.join(root, lib) for lib in LIBS)
    script = ("#!/bin/sh\n# QEMU from the trixie rootfs, run through its own loader (devtools/trixie_qemu.py)\n"
              f"QEMU_MODULE_DIR={q(os.path.join(root, 'usr/lib/x86_64-linux-gnu/qemu'))} exec "
              f"{q(os.path.join(root, 'usr/lib64/ld-linux-x86-64.so.2'))} --library-path {q(libs)} "
              f"{q(os.path.join(root, 'usr/bin/qemu-system-x86_64'))} -L {q(os.path.join(root, 'usr/share/qemu'))} "
              '"$@"\n')
    path = os.path.join(directory, "qemu-system-x86_64-trixie")
    with open(path, "w") as fh:
        fh.write(script)
    os.chmod(path, 0o755)
    return path


def version(binary: str) -> str:
    """`QEMU emulator version 10.0.13 (Debian ...)` -> `10.0.13`."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60, check=True).stdout
    return out.split()[3]
