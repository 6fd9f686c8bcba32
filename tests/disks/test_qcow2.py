"""The directly written qcow2 overlay is byte for byte what this node's qemu-img writes, and qemu-img accepts it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from slurm_vm.disks.qcow2 import MAX_SIZE, supported, write_overlay

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing")
SIZES = [1, 511, 512, 1 << 20, 64 << 20, 100 << 20, 1_000_000_001, 512 << 20, (512 << 20) + 1, 1 << 33,
         100 << 30, 1 << 40, 8 << 40, 70 << 40, MAX_SIZE]


def ours(path: str, size: int, base: str, fmt: str) -> bytes:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_overlay(fd, size, base, fmt)
    finally:
        os.close(fd)
    return open(path, "rb").read()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("qcow2") / "base image.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "64M"], check=True, timeout=30)
    return path


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
@pytest.mark.parametrize("size", SIZES)
def test_byte_for_byte_as_qemu_img(tmp_path, base, size, fmt):
    theirs = tmp_path / "theirs.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", fmt, str(theirs), str(size)],
                   check=True, timeout=30)
    assert ours(str(tmp_path / "ours.qcow2"), size, base, fmt) == theirs.read_bytes()


@pytest.mark.parametrize("size", [100 << 20, 8 << 40])
def test_qemu_img_check_and_info_accept_it(tmp_path, base, size):
    path = str(tmp_path / "ours.qcow2")
    ours(path, size, base, "qcow2")
    check = subprocess.run(["qemu-img", "check", "--output=json", path], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["check-errors"] == 0
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", path], capture_output=True, text=True,
                                     check=True, timeout=60).stdout)
    assert (info["format"], info["virtual-size"], info["cluster-size"]) == ("qcow2", size, 65536)
    assert (info["backing-filename"], info["backing-filename-format"]) == (base, "qcow2")
    assert info["format-specific"]["data"]["compat"] == "1.1"


def test_what_it_does_not_cover():
    assert supported(1 << 30, "/images/base.qcow2", "qcow2")
    assert not supported(MAX_SIZE + 1, "/images/base.qcow2", "qcow2")
    assert not supported(1 << 30, "/" + "x" * 1023, "qcow2")
    assert not supported(1 << 30, "/images/base.vmdk", "vmdk")
    assert not supported(0, "/images/base.qcow2", "qcow2")


def test_create_overlay_writes_it_directly_and_never_through_a_symlink(tmp_path, base):
    from slurm_vm.disks.overlay import create_overlay
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    overlay = tmp_path / "overlay.qcow2"
    overlay.symlink_to(target)
    assert create_overlay(base, "qcow2", str(overlay), None, os.getuid(), os.getgid()) == 64 << 20
    assert target.read_bytes() == b"keep" and not overlay.is_symlink()
    assert os.stat(overlay).st_mode & 0o777 == 0o600
    theirs = tmp_path / "theirs.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", str(theirs), str(64 << 20)],
                   check=True, timeout=30)
    assert overlay.read_bytes() == theirs.read_bytes()
