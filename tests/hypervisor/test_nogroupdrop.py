"""virtiofsd as a user with supplementary groups (as under Slurm), on the real kernel and the real daemon.

A child of the (root) test process takes an unprivileged uid with a supplementary group, the way
slurmstepd starts a job step; without the filter setgroups(2) fails there, with it the call is a no-op.
Then ShareDaemons starts the real virtiofsd the same way the launcher does and its socket must appear.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import struct
import tempfile
import time

import pytest

from slurm_vm.hypervisor import nogroupdrop
from slurm_vm.hypervisor.shares import ShareDaemons, socket_path
from tests.hypervisor.shapes import definition

UID = GID = 65534
EXTRA_GROUP = 4242
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"


def test_program_matches_only_setgroups_of_the_native_abi():
    code = nogroupdrop.program("x86_64")
    rows = [struct.unpack("=HBBI", code[i:i + 8]) for i in range(0, len(code), 8)]
    assert rows[1] == (nogroupdrop.BPF_JEQ_K, 0, 3, 0xC000003E) and rows[3] == (nogroupdrop.BPF_JEQ_K, 0, 1, 116)
    assert rows[4][3] == nogroupdrop.SECCOMP_RET_ERRNO and rows[5][3] == nogroupdrop.SECCOMP_RET_ALLOW
    # both jumps that skip the match land on ALLOW
    assert 1 + 1 + rows[1][2] == 5 and 3 + 1 + rows[3][2] == 5
    assert nogroupdrop.program("s390x") is None


def in_child(body) -> int:
    """Run `body` in a forked child as uid/gid 65534 with one supplementary group; its exit status."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.setgroups([EXTRA_GROUP])
            os.setgid(GID)
            os.setuid(UID)
            status = body()
        finally:
            os._exit(status)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def try_setgroups(with_filter: bool) -> int:
    if with_filter and nogroupdrop.installer(ctypes.CDLL(None, use_errno=True))() != 0:
        return 3
    try:
        os.setgroups([])
    except PermissionError:
        return 2
    return 0 if os.getgroups() == [EXTRA_GROUP] else 4


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to take another uid with a supplementary group")
def test_setgroups_is_refused_without_the_filter_and_a_no_op_with_it():
    assert in_child(lambda: try_setgroups(False)) == 2
    assert in_child(lambda: try_setgroups(True)) == 0


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(VIRTIOFSD), reason="needs root and QEMU's virtiofsd")
def test_virtiofsd_starts_for_a_user_with_supplementary_groups():
    base = tempfile.mkdtemp(prefix="svm-nogroupdrop-")
    try:
        share, run = os.path.join(base, "share"), os.path.join(base, "run")
        for path in (share, run):
            os.mkdir(path)
            os.chown(path, UID, GID)
        os.chmod(base, 0o755)
        defn = dataclasses.replace(definition(shares=1, share_transport="virtiofs"), run_dir=run,
                                   virtiofsd_binary=VIRTIOFSD)
        defn = dataclasses.replace(defn, shares=(dataclasses.replace(defn.shares[0], path=share, readonly=False),))

        def start() -> int:
            daemons = ShareDaemons(defn, os.path.join(run, "vmm.log"))
            try:
                daemons.start(time.monotonic() + 30)
                return 0 if os.path.exists(socket_path(defn, 0)) else 5
            finally:
                daemons.stop()
        status = in_child(start)
        with open(os.path.join(run, "vmm.log"), errors="replace") as fh:
            log = fh.read()
        assert status == 0, log
        assert "setgroups() failed" not in log
    finally:
        shutil.rmtree(base, ignore_errors=True)
