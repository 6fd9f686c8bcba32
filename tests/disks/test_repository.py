"""A user's image repository (disks/repository.py) with real qemu-img: import, list, info, rm, quota, refusals."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from slurm_vm.disks import repository as repo
from slurm_vm.errors import ImageError

QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"
QEMU_IO = shutil.which("qemu-io") or "/usr/bin/qemu-io"
LIMIT = 1 << 30
QUOTA = 64 << 20
UID = os.getuid()

pytestmark = pytest.mark.skipif(not os.path.exists(QEMU_IMG), reason="qemu-img not installed")


@pytest.fixture
def user_dir(tmp_path) -> str:
    return str(tmp_path / "repo" / "alice")


@pytest.fixture
def sources(tmp_path) -> dict:
    (tmp_path / "repo").mkdir()
    qcow = str(tmp_path / "src.qcow2")
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", qcow, "32M"], check=True)
    subprocess.run([QEMU_IO, "-f", "qcow2", "-c", "write -P 0x61 1M 2M", qcow], check=True, capture_output=True)
    raw = tmp_path / "src.img"
    raw.write_bytes(b"SVM-MARKER" + os.urandom((8 << 20) - 10))
    return {"qcow2": qcow, "raw": str(raw)}


def do_import(user_dir: str, source: str, fmt: str, name: str, quota: int = QUOTA) -> repo.UserImage:
    return repo.import_image(repo.ImportRequest(source, fmt, name, "tiny"), user_dir, UID, quota, LIMIT, QEMU_IMG)


def only_named_files(user_dir: str) -> set[str]:
    return set(os.listdir(user_dir))


def test_import_qcow2_and_raw_list_info_rm(user_dir, sources):
    a = do_import(user_dir, sources["qcow2"], "qcow2", "a")
    b = do_import(user_dir, sources["raw"], "raw", "b")
    assert (a.virtual_size, b.virtual_size) == (32 << 20, 8 << 20)
    assert os.stat(user_dir).st_mode & 0o777 == 0o700
    assert only_named_files(user_dir) == {"a.qcow2", "a.json", "b.qcow2", "b.json"}
    with open(b.path, "rb") as fh:
        assert fh.read(4) == b"QFI\xfb"        # converted: always a qcow2
    back = os.path.join(os.path.dirname(user_dir), "back.raw")
    subprocess.run([QEMU_IMG, "convert", "-f", "qcow2", "-O", "raw", b.path, back], check=True)
    with open(back, "rb") as fh, open(sources["raw"], "rb") as src:
        assert fh.read() == src.read()        # the contents came along
    listed = repo.list_images(user_dir, UID, LIMIT, QEMU_IMG)
    assert [(n, r.boot) for n, r in listed] == [("a", "tiny"), ("b", "tiny")]
    assert repo.resolve_for_use(user_dir, "a", UID, LIMIT, QEMU_IMG, ["tiny"]).path == a.path
    repo.remove_image(user_dir, UID, "a", ["tiny"])
    assert repo.names(user_dir) == ["b"]


def test_unknown_name_lists_what_exists(user_dir, sources):
    do_import(user_dir, sources["raw"], "raw", "mine")
    with pytest.raises(ImageError) as exc:
        repo.resolve_for_use(user_dir, "nope", UID, LIMIT, QEMU_IMG, ["debian", "tiny"])
    assert str(exc.value) == ("image: no user:nope in your repository; yours: user:mine; the admins': debian, tiny "
                              "(`slurm-vm images`)")
    with pytest.raises(ImageError, match="no user:nope"):
        repo.remove_image(user_dir, UID, "nope", ["tiny"])


def test_name_taken_and_bad_name_are_refused(user_dir, sources):
    do_import(user_dir, sources["raw"], "raw", "x")
    with pytest.raises(ImageError, match="already have an image x"):
        do_import(user_dir, sources["qcow2"], "qcow2", "x")
    with pytest.raises(ImageError, match="image name"):
        do_import(user_dir, sources["qcow2"], "qcow2", "../escape")


def test_quota_overflow_is_refused_and_leaves_nothing(user_dir, sources):
    do_import(user_dir, sources["raw"], "raw", "first", quota=12 << 20)
    before = only_named_files(user_dir)
    with pytest.raises(ImageError, match="^quota: "):
        do_import(user_dir, sources["raw"], "raw", "second", quota=12 << 20)
    assert only_named_files(user_dir) == before


def test_hostile_import_leaves_nothing(user_dir, sources, tmp_path):
    evil = str(tmp_path / "evil.qcow2")
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", evil, "1M"],
                   check=True)
    with pytest.raises(ImageError, match="backing file"):
        do_import(user_dir, evil, "qcow2", "evil")
    assert only_named_files(user_dir) == set()


def test_an_image_changed_behind_slurm_vms_back_is_refused_at_use(user_dir, sources):
    """The user swaps the checked file for one with a backing file after the import: use checks again."""
    img = do_import(user_dir, sources["qcow2"], "qcow2", "swapped")
    os.unlink(img.path)
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", img.path, "1M"],
                   check=True)
    with pytest.raises(ImageError, match="backing file"):
        repo.resolve_for_use(user_dir, "swapped", UID, LIMIT, QEMU_IMG, ["tiny"])
    assert isinstance(dict(repo.list_images(user_dir, UID, LIMIT, QEMU_IMG))["swapped"], str)


def test_a_dir_someone_else_made_is_refused(user_dir, sources):
    os.mkdir(user_dir, 0o700)
    os.chown(user_dir, 4202, 4202)
    with pytest.raises(ImageError, match="belongs to uid 4202"):
        do_import(user_dir, sources["raw"], "raw", "x")


def test_a_symlinked_dir_is_refused(user_dir, sources, tmp_path):
    os.symlink(str(tmp_path), user_dir)
    with pytest.raises(ImageError, match="not a directory"):
        do_import(user_dir, sources["raw"], "raw", "x")


def test_a_record_that_names_no_admin_image_is_refused(user_dir, sources):
    img = do_import(user_dir, sources["raw"], "raw", "r")
    with open(repo.meta_path(user_dir, "r"), "w") as fh:
        fh.write('{"boot": "../../etc"}')
    with pytest.raises(ImageError, match="names no admin image"):
        repo.resolve_for_use(user_dir, "r", UID, LIMIT, QEMU_IMG, ["tiny"])
    assert os.path.exists(img.path)
