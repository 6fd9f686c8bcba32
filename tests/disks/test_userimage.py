"""Hostile image files against slurm_vm.disks.userimage, with real qemu-img on crafted files."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time

import pytest

from slurm_vm.disks import userimage as ui
from slurm_vm.errors import ImageError, UserFault

QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"
LIMIT = 1 << 30          # the admin's max virtual size in these tests
P = 1 << 50

pytestmark = pytest.mark.skipif(not os.path.exists(QEMU_IMG), reason="qemu-img not installed")


def qimg(*args: str) -> None:
    subprocess.run([QEMU_IMG, *args], check=True, capture_output=True)


@pytest.fixture
def good(tmp_path) -> str:
    path = str(tmp_path / "good.qcow2")
    qimg("create", "-q", "-f", "qcow2", path, "64M")
    subprocess.run([shutil.which("qemu-io") or "/usr/bin/qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", path],
                   check=True, capture_output=True)
    return path


def refused(path: str, fmt: str, limit: int = LIMIT) -> str:
    with pytest.raises(ImageError) as exc:
        ui.inspect_image(path, fmt, limit, QEMU_IMG)
    message = str(exc.value)
    assert "\n" not in message and path in message
    return message


def test_a_plain_qcow2_and_raw_are_accepted(good, tmp_path):
    facts = ui.inspect_image(good, "qcow2", LIMIT, QEMU_IMG)
    assert facts.format == "qcow2" and facts.virtual_size == 64 << 20
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * (3 << 20))
    assert ui.inspect_image(str(raw), "raw", LIMIT, QEMU_IMG).virtual_size == 3 << 20


def test_backing_file_etc_shadow_is_refused(tmp_path):
    path = str(tmp_path / "shadow.qcow2")
    qimg("create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", path, "1M")
    assert "backing file" in refused(path, "qcow2")


def test_backing_file_another_users_image_is_refused(tmp_path, good):
    path = str(tmp_path / "theirs.qcow2")
    qimg("create", "-q", "-f", "qcow2", "-u", "-b", good, "-F", "qcow2", path, "64M")
    assert "backing file" in refused(path, "qcow2")


def test_backing_file_without_format_extension_is_refused(tmp_path):
    """A v2 header has no extensions: the backing offset alone must be enough."""
    path = str(tmp_path / "v2.qcow2")
    qimg("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-u", "-b", "/dev/sda", "-F", "raw", path, "1M")
    assert "backing file" in refused(path, "qcow2")


def test_json_backing_name_is_refused(tmp_path):
    path = str(tmp_path / "json.qcow2")
    qimg("create", "-q", "-f", "qcow2", "-u", "-b", 'json:{"driver":"file","filename":"/etc/shadow"}',
         "-F", "raw", path, "1M")
    assert "backing file" in refused(path, "qcow2")


def test_json_pseudo_filename_is_refused(tmp_path):
    name = 'json:{"driver":"file","filename":"/etc/shadow"}'
    with pytest.raises(ImageError, match="json:"):
        ui.inspect_image(name, "raw", LIMIT, QEMU_IMG)


def test_backing_fifo_is_never_opened(tmp_path):
    """If anything followed the backing file, it would block on the FIFO's open: refusal must be immediate."""
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    path = str(tmp_path / "fifo.qcow2")
    qimg("create", "-q", "-f", "qcow2", "-u", "-b", fifo, "-F", "raw", path, "1M")
    start = time.monotonic()
    assert "backing file" in refused(path, "qcow2")
    assert time.monotonic() - start < 5


def test_external_data_file_is_refused(tmp_path):
    path = str(tmp_path / "data.qcow2")
    qimg("create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", path, "1M")
    assert "external data file" in refused(path, "qcow2")


def test_raw_named_qcow2_is_a_format_mismatch(tmp_path):
    path = tmp_path / "fake.qcow2"
    path.write_bytes(b"\0" * (1 << 20))
    fmt = ui.format_from_name(str(path))
    assert fmt == "qcow2"
    assert "format mismatch" in refused(str(path), fmt)


def test_qcow2_taken_as_raw_is_a_format_mismatch(good, tmp_path):
    path = str(tmp_path / "hidden.raw")
    shutil.copy(good, path)
    assert "format mismatch" in refused(path, ui.format_from_name(path))


def test_truncated_qcow2_is_refused(good, tmp_path):
    path = str(tmp_path / "cut.qcow2")
    with open(good, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(1000))
    assert "truncated" in refused(path, "qcow2")


def test_truncated_data_clusters_are_found_by_qemu_img_check(good, tmp_path):
    """Tables intact, data clusters cut off: the header rules pass, qemu-img check does not."""
    path = str(tmp_path / "cut.qcow2")
    shutil.copy(good, path)
    header = ui.parse_qcow2_header(open(path, "rb").read(ui.HEADER_READ))
    cluster = 1 << header.cluster_bits
    tables_end = max(header.l1_offset + 8 * header.l1_size,
                     header.refcount_offset + cluster * header.refcount_clusters)
    os.truncate(path, max(tables_end, 4 * cluster))
    assert os.path.getsize(path) < os.path.getsize(good)
    assert "damaged or truncated" in refused(path, "qcow2")


def test_petabyte_virtual_size_is_refused(tmp_path):
    path = str(tmp_path / "huge.qcow2")
    qimg("create", "-q", "-f", "qcow2", path, str(P))
    assert "above the site's limit" in refused(path, "qcow2")
    raw = str(tmp_path / "huge.raw")
    open(raw, "wb").close()
    os.truncate(raw, 2 * LIMIT)          # sparse: no space taken
    assert "above the site's limit" in refused(raw, "raw")


def test_symlink_device_fifo_and_directory_are_refused(tmp_path, good):
    link = str(tmp_path / "link.qcow2")
    os.symlink(good, link)
    assert "symbolic link" in refused(link, "qcow2")
    assert "not a regular file" in refused("/dev/zero", "raw")
    fifo = str(tmp_path / "pipe.raw")
    os.mkfifo(fifo)
    assert "not a regular file" in refused(fifo, "raw")
    assert "not a regular file" in refused(str(tmp_path), "raw")


def test_unknown_incompatible_feature_is_refused(good, tmp_path):
    path = str(tmp_path / "future.qcow2")
    shutil.copy(good, path)
    with open(path, "r+b") as fh:
        fh.seek(72)
        fh.write(struct.pack(">Q", 1 << 40))
    assert "unknown incompatible" in refused(path, "qcow2")


def test_qemu_img_info_json_is_checked_too(tmp_path):
    """Belt and braces: what qemu-img itself says about a hostile file is refused without the header rules."""
    path = str(tmp_path / "shadow.qcow2")
    qimg("create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", path, "1M")
    fd = os.open(path, os.O_RDONLY)
    try:
        info = ui.qemu_img_json(QEMU_IMG, ["info", "--output=json", "-U", "-f", "qcow2"], fd)
    finally:
        os.close(fd)
    assert ui.info_problems(info, "qcow2", LIMIT) == ["it names a backing file"]
    assert ui.info_problems({**info, "format": "raw"}, "qcow2", LIMIT)[0].startswith("qemu-img sees format")


def test_format_from_name():
    assert ui.format_from_name("/a/b.QCOW2") == "qcow2"
    assert ui.format_from_name("/a/b.img") == "raw"
    assert ui.format_from_name("/a/b", "raw") == "raw"
    with pytest.raises(ImageError, match="--format"):
        ui.format_from_name("/a/b.vmdk")
    with pytest.raises(ImageError, match="qcow2 or raw"):
        ui.format_from_name("/a/b.qcow2", "vmdk")


def test_image_errors_are_the_users_fault():
    assert isinstance(ImageError("x"), UserFault)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_as_user_another_users_image_is_not_readable(good):
    """Root asks as the user (run_as_user): svmother cannot read svmtest's 0600 image, whatever root could."""
    import pwd
    import tempfile
    from slurm_vm.disks.safefs import run_as_user
    from slurm_vm.errors import NodeError
    owner, other = pwd.getpwnam("svmtest"), pwd.getpwnam("svmother")
    top = tempfile.mkdtemp(prefix="images-test-", dir="/var/tmp")
    os.chmod(top, 0o755)
    request_cleanup = shutil.rmtree
    good = shutil.copy(good, os.path.join(top, "good.qcow2"))
    os.chown(good, owner.pw_uid, owner.pw_gid)
    os.chmod(good, 0o600)
    facts = run_as_user(owner.pw_uid, owner.pw_gid, [owner.pw_gid], ui.inspect_image, good, "qcow2", LIMIT, QEMU_IMG)
    assert facts.virtual_size == 64 << 20
    try:
        with pytest.raises(NodeError, match="Permission denied"):
            run_as_user(other.pw_uid, other.pw_gid, [other.pw_gid], ui.inspect_image, good, "qcow2", LIMIT, QEMU_IMG)
    finally:
        request_cleanup(top)
