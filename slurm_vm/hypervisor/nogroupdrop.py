"""A seccomp filter that turns setgroups(2) into a no-op, for virtiofsd in an unprivileged user namespace.

QEMU's C virtiofsd (Debian 12, CVE-2022-0358 fix) calls `setgroups(0, NULL)` first thing and exits if
it fails. A user namespace made without privilege (`unshare --map-root-user`) must deny setgroups, and
every Slurm job step has at least the user's primary group as a supplementary group, so under Slurm the
daemon would always exit with "setgroups() failed". This filter makes that one call return 0 without
doing anything: the daemon keeps the job user's groups, which are the user's own rights (9p's QEMU keeps
them too), so a group-shared project directory works as it does for the user's other processes.

The filter grants nothing: a process can only lose rights through setgroups, and in that namespace the
kernel refuses the call anyway. It is installed in the launcher's child before it execs `unshare`, with
no_new_privs set (the kernel requires it of an unprivileged process; nothing in the chain is setuid).
"""

from __future__ import annotations

import platform
import struct

PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000          # | 0: the call "succeeds" with 0 and is not run

BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06
ARCH_OFFSET, NR_OFFSET = 4, 0           # struct seccomp_data: int nr; __u32 arch; ...

# machine -> (AUDIT_ARCH_*, __NR_setgroups)
SETGROUPS = {"x86_64": (0xC000003E, 116), "aarch64": (0xC00000B7, 159), "ppc64le": (0xC0000015, 81),
             "riscv64": (0xC00000F3, 159)}


def instruction(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program(machine: str | None = None) -> bytes | None:
    """The BPF program (struct sock_filter[]), or None on a machine this module does not know."""
    known = SETGROUPS.get(machine or platform.machine())
    if known is None:
        return None
    arch, nr = known
    return b"".join([
        instruction(BPF_LD_W_ABS, 0, 0, ARCH_OFFSET),
        instruction(BPF_JEQ_K, 0, 3, arch),          # another ABI: allow
        instruction(BPF_LD_W_ABS, 0, 0, NR_OFFSET),
        instruction(BPF_JEQ_K, 0, 1, nr),
        instruction(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO),
        instruction(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ])


def installer(libc):
    """A function for a forked child that installs the filter (prepared before the fork: no allocation in
    the child beyond ctypes calls). Returns an errno, 0 on success."""
    import ctypes
    code = program()
    if code is None:
        return lambda: 0
    filters = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(code) // 8, ctypes.cast(filters, ctypes.c_void_p))

    def install() -> int:
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return ctypes.get_errno()
        if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
            return ctypes.get_errno()
        return 0
    install.keep = (filters, fprog)  # type: ignore[attr-defined]
    return install
