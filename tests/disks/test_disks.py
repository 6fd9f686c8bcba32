"""The disks module with real qemu-img, isoinfo, the kernel's iso9660 driver and real users."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from slurm_vm.disks.overlay import create_overlay, qemu_img_info
from slurm_vm.errors import DiskSizeError
from slurm_vm.disks.safefs import make_private_dir, remove_tree_safely, run_as_user, write_file_atomic
from slurm_vm.disks.seed import build_seed_iso
from slurm_vm.node.cloudinit import render_meta_data, render_user_data
from slurm_vm.disks.volumes import VolumeReservations, check_volume_as_user
from slurm_vm.errors import NodeError, VolumeError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHqZrH0kXH3kq7mJ8CwLrDkYbI6RmDsZ4bq2m3M8kN7c a@b"


@pytest.fixture
def workdir():
    path = tempfile.mkdtemp(prefix="svm-disks-", dir="/var/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pytest.skip(f"user {name} missing (the test cluster or hook tests create it)")


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


# --- overlays ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", ["100M", "100G"])
def test_overlay_backs_onto_the_base_without_copying(workdir, size):
    base = os.path.join(workdir, "base.img")
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", base, size], check=True)
    overlay = os.path.join(workdir, "overlay.qcow2")
    started = time.perf_counter()
    result = create_overlay(base, "raw", overlay, None, os.getuid(), os.getgid())
    elapsed = time.perf_counter() - started
    info = qemu_img_info(overlay)
    assert info["backing-filename"] == base and info["backing-filename-format"] == "raw"
    assert info["virtual-size"] == result == qemu_img_info(base)["virtual-size"]
    assert os.path.getsize(overlay) < 1 << 20
    assert oct(os.stat(overlay).st_mode & 0o777) == "0o600"
    assert elapsed < 5


def test_overlay_grows_to_the_asked_size_and_refuses_shrinking(workdir):
    base = os.path.join(workdir, "base.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "64M"], check=True)
    overlay = os.path.join(workdir, "o.qcow2")
    assert create_overlay(base, "qcow2", overlay, 256 << 20, os.getuid(), os.getgid()) == 256 << 20
    assert qemu_img_info(overlay)["virtual-size"] == 256 << 20
    with pytest.raises(DiskSizeError, match="disk: 32M is smaller than the image's 64M"):
        create_overlay(base, "qcow2", os.path.join(workdir, "p.qcow2"), 32 << 20, os.getuid(), os.getgid())


def test_overlay_of_a_missing_base_names_it(workdir):
    with pytest.raises(NodeError, match="does not exist"):
        create_overlay(os.path.join(workdir, "nope"), "qcow2", os.path.join(workdir, "o"), None, 0, 0)


# --- seeds ---------------------------------------------------------------------------------------------

def iso_file(iso: str, name: str) -> bytes:
    return subprocess.run(["isoinfo", "-R", "-i", iso, "-x", f"/{name}"], capture_output=True, check=True).stdout


def test_seed_iso_is_read_back_byte_exact_by_isoinfo(workdir):
    meta = render_meta_data("iid-1", "host1")
    user_data = "#cloud-config\nruncmd: [echo \u00e9t\u00e9]\n"
    network = "version: 2\nethernets: {}\n"
    vendor = "#cloud-config\n{}\n"
    iso = os.path.join(workdir, "seed.iso")
    with open(iso, "wb") as fh:
        fh.write(build_seed_iso(meta, user_data, network, vendor))
    info = subprocess.run(["isoinfo", "-d", "-i", iso], capture_output=True, text=True, check=True).stdout
    assert "Volume id: cidata" in info and "Rock Ridge" in info and "Joliet" in info
    for name, text in (("meta-data", meta), ("user-data", user_data), ("network-config", network),
                       ("vendor-data", vendor)):
        assert iso_file(iso, name) == text.encode()


def test_seed_iso_is_read_by_the_linux_kernel(workdir):
    need_root()
    iso = os.path.join(workdir, "seed.iso")
    with open(iso, "wb") as fh:
        fh.write(build_seed_iso(render_meta_data("iid-2", "h2"), "#cloud-config\n{}\n"))
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    proc = subprocess.run(["mount", "-o", "loop,ro", "-t", "iso9660", iso, mnt], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"this host kernel cannot loop-mount iso9660 ({proc.stderr.strip()}); the guest tests read it")
    try:
        assert sorted(os.listdir(mnt)) == ["meta-data", "user-data"]
        assert yaml.safe_load(open(os.path.join(mnt, "meta-data"))) == {"instance-id": "iid-2", "local-hostname": "h2"}
    finally:
        subprocess.run(["umount", mnt], check=True)


def test_user_data_gets_the_keys_in_the_right_place():
    ud, vd = render_user_data(None, [KEY], "h")
    assert yaml.safe_load(ud)["ssh_authorized_keys"] == [KEY] and vd is None
    ud, vd = render_user_data("#cloud-config\nssh_authorized_keys: [other]\npackages: [htop]\n", [KEY], "h")
    assert yaml.safe_load(ud) == {"ssh_authorized_keys": ["other", KEY], "packages": ["htop"]} and vd is None
    script = "#!/bin/sh\necho hi\n"
    ud, vd = render_user_data(script, [KEY], "h")
    assert ud == script and yaml.safe_load(vd)["ssh_authorized_keys"] == [KEY]
    broken = "#cloud-config\n: : :\n"
    ud, vd = render_user_data(broken, [KEY], "h")
    assert ud == broken and KEY in vd


@settings(max_examples=200)
@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=63))
def test_meta_data_round_trips_any_text(instance_id, hostname):
    assert yaml.safe_load(render_meta_data(instance_id, hostname)) == {"instance-id": instance_id,
                                                                        "local-hostname": hostname}


def test_large_user_data_builds(workdir):
    data = "#cloud-config\n# " + "x" * (10 << 20) + "\n"
    iso = build_seed_iso(render_meta_data("i", "h"), data)
    assert len(iso) > 10 << 20


# --- safe file handling --------------------------------------------------------------------------------

def test_write_file_atomic_never_follows_a_planted_symlink(workdir):
    victim = os.path.join(workdir, "victim")
    with open(victim, "w") as fh:
        fh.write("keep")
    job = os.path.join(workdir, "job")
    os.mkdir(job)
    os.symlink(victim, os.path.join(job, "seed.iso"))
    fd = os.open(job, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_file_atomic(fd, "seed.iso", b"data", os.getuid(), os.getgid())
    finally:
        os.close(fd)
    assert open(victim).read() == "keep"
    assert open(os.path.join(job, "seed.iso"), "rb").read() == b"data"
    with pytest.raises(NodeError):
        write_file_atomic(fd, "../escape", b"x", 0, 0)


def test_remove_tree_does_not_follow_links_out(workdir):
    outside = os.path.join(workdir, "outside")
    os.mkdir(outside)
    open(os.path.join(outside, "precious"), "w").close()
    tree = os.path.join(workdir, "tree")
    os.makedirs(os.path.join(tree, "sub"))
    os.symlink(outside, os.path.join(tree, "sub", "link"))
    remove_tree_safely(tree)
    remove_tree_safely(tree)
    assert not os.path.exists(tree) and os.path.exists(os.path.join(outside, "precious"))


def test_private_dir_refuses_an_unsafe_parent(workdir):
    need_root()
    unsafe = os.path.join(workdir, "unsafe")
    os.mkdir(unsafe)
    os.chmod(unsafe, 0o777)
    with pytest.raises(NodeError, match="not group/world-writable"):
        make_private_dir(os.path.join(unsafe, "job"), 4201, 4201)
    safe = os.path.join(workdir, "safe")
    os.mkdir(safe, 0o755)
    make_private_dir(os.path.join(safe, "job"), 4201, 4201)
    st_ = os.stat(os.path.join(safe, "job"))
    assert (st_.st_uid, st_.st_mode & 0o777) == (4201, 0o700)


# --- volumes as the user -------------------------------------------------------------------------------

def test_volume_checks_run_with_the_users_rights(workdir):
    need_root()
    me, other = user("svmtest"), user("svmother")
    own = os.path.join(workdir, "own.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", own, "8M"], check=True)
    os.chown(own, me.pw_uid, me.pw_gid)
    info = check_volume_as_user(own, me.pw_uid, me.pw_gid, [me.pw_gid], readonly=False)
    assert info.format == "qcow2" and info.st_ino == os.stat(own).st_ino
    theirs = os.path.join(workdir, "theirs.img")
    open(theirs, "wb").close()
    os.chown(theirs, other.pw_uid, other.pw_gid)
    os.chmod(theirs, 0o600)
    readable = os.path.join(workdir, "readonly.img")
    with open(readable, "wb") as fh:
        fh.truncate(4096)
    os.chmod(readable, 0o644)
    assert check_volume_as_user(readable, me.pw_uid, me.pw_gid, [me.pw_gid], readonly=True).format == "raw"
    shadow_link = os.path.join(workdir, "shadow.img")
    os.symlink("/etc/shadow", shadow_link)
    fifo = os.path.join(workdir, "fifo")
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    for path, readonly, message in ((theirs, True, "may not read"), (readable, False, "may not read and write"),
                                    (shadow_link, True, "may not read"), (workdir, True, "not a regular file"),
                                    (fifo, True, "not a regular file"), ("/nonexistent/x", True, "does not exist")):
        with pytest.raises(VolumeError, match=message):
            check_volume_as_user(path, me.pw_uid, me.pw_gid, [me.pw_gid], readonly)


def test_user_checks_are_bounded_in_time():
    need_root()
    me = user("svmtest")
    with pytest.raises(NodeError, match="did not answer within"):
        run_as_user(me.pw_uid, me.pw_gid, [me.pw_gid], time.sleep, 30, timeout=0.5)


def test_reservations_keep_a_volume_to_one_running_job(workdir):
    need_root()
    me = user("svmtest")
    vol = os.path.join(workdir, "v.img")
    open(vol, "wb").close()
    os.chown(vol, me.pw_uid, me.pw_gid)
    info = check_volume_as_user(vol, me.pw_uid, me.pw_gid, [me.pw_gid], readonly=False)
    res = VolumeReservations(os.path.join(workdir, "locks"))
    res.reserve(info, 10)
    res.reserve(info, 10)
    with pytest.raises(VolumeError, match="attached to job 10"):
        res.reserve(info, 11)
    res.reserve(info, 12, is_alive=lambda job: job != 10)   # job 10 died without its epilog
    assert res.holders() == [(f"{info.st_dev}-{info.st_ino}", 12)]
    res.release_job(12)
    res.release_job(12)
    assert res.holders() == []
    assert os.path.exists(vol)


@pytest.mark.parametrize("fmt,size", [("qcow2", "100G"), ("raw", "7M"), ("qcow2", "1536K")])
def test_base_size_from_the_header_matches_qemu_img(workdir, fmt, size):
    from slurm_vm.disks.overlay import base_virtual_size
    base = os.path.join(workdir, f"b.{fmt}")
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, base, size], check=True)
    assert base_virtual_size(base, fmt) == qemu_img_info(base, fmt)["virtual-size"]
