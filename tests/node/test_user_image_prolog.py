"""The prolog's side of users' images: checked as the job's user (root never parses the file), planned with the
size that check found, the overlay made without opening the user's file (qemu-img create -u)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile

import pytest

from slurm_vm.config import parse_config
from slurm_vm.disks.overlay import create_overlay
from slurm_vm.errors import ImageError, NodeError
from slurm_vm.node.context import JobContext
from slurm_vm.node.plan import make_plan
from slurm_vm.node.prolog import with_user_image
from slurm_vm.spec import parse_spec

QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"

CONFIG = """
state_dir: /var/lib/svm/%n
images:
  deb: {{path: /img/deb.qcow2, kernel: /img/vmlinux, initrd: /img/initrd, cmdline: "console=ttyS0 root=/dev/vda"}}
user_images: {{repository: {root}/%u, quota: 1G, max_virtual_size: 2G}}
hypervisor: {{qemu_img: {qemu_img}}}
"""
SPEC = "name: web\nimage: user:mine\n"


def ctx(user: str) -> JobContext:
    pw = pwd.getpwnam(user)
    return JobContext(job_id=77, uid=pw.pw_uid, gid=pw.pw_gid, user=user, node="n1", nodes=("n1",), cluster="c",
                      comment="")


def test_planning_a_user_image_without_its_check_is_refused():
    config = parse_config(CONFIG.format(root="/repo", qemu_img=QEMU_IMG), "c")
    spec = parse_spec(SPEC, "spec", config)
    with pytest.raises(NodeError, match="check as the user"):
        make_plan(spec, config, ctx("root"))


def test_user_image_spec_needs_the_sites_repository():
    config = parse_config("images: {deb: {path: /i.qcow2, kernel: /k}}\n", "c")
    with pytest.raises(Exception, match="has no user images"):
        parse_spec(SPEC, "spec", config)


@pytest.fixture
def repo_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (checks as svmtest and svmother)")
    root = tempfile.mkdtemp(prefix="images-prolog-", dir="/var/tmp")
    os.chmod(root, 0o1777)
    yield root
    shutil.rmtree(root)


def as_user(user: str, *argv: str) -> None:
    pw = pwd.getpwnam(user)
    subprocess.run(list(argv), check=True, capture_output=True, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                   timeout=60)


def users_image(root: str, user: str, *create: str) -> str:
    directory = os.path.join(root, user)
    as_user(user, "mkdir", "-m", "700", directory)
    path = os.path.join(directory, "mine.qcow2")
    as_user(user, QEMU_IMG, "create", "-q", "-f", "qcow2", *create, path, "256M")
    as_user(user, "sh", "-c", f'echo \'{{"boot": "deb"}}\' > {directory}/mine.json')
    return path


@pytest.mark.root
def test_the_prolog_checks_as_the_user_and_plans_without_opening_it(repo_root, tmp_path):
    path = users_image(repo_root, "svmtest")
    config = parse_config(CONFIG.format(root=repo_root, qemu_img=QEMU_IMG), "c")
    spec = parse_spec(SPEC, "spec", config)
    job_config, size = with_user_image(spec, config, ctx("svmtest"))
    assert size == 256 << 20
    image = job_config.images["user:mine"]
    assert (image.path, image.format, image.kernel, image.cmdline) == (
        path, "qcow2", "/img/vmlinux", "console=ttyS0 root=/dev/vda")
    plan = make_plan(spec, job_config, ctx("svmtest"), base_size=size)
    assert plan.base_image == path and plan.base_size == size and plan.definition.boot.kernel == "/img/vmlinux"
    # The overlay, as root, with the size given: qemu-img is told not to open the backing file. Proof: the
    # backing file is made unreadable even for root's qemu-img check (a FIFO would hang it; here: removed).
    overlay = str(tmp_path / "overlay.qcow2")
    os.rename(path, path + ".away")
    assert create_overlay(path, "qcow2", overlay, None, 0, 0, QEMU_IMG, base_size=size) == size
    info = subprocess.run([QEMU_IMG, "info", "--output=json", "-U", "-f", "qcow2", overlay], capture_output=True,
                          text=True, check=True).stdout
    assert f'"backing-filename": "{path}"' in info and '"backing-filename-format": "qcow2"' in info


@pytest.mark.root
def test_another_user_naming_the_same_image_gets_their_own_repository(repo_root):
    users_image(repo_root, "svmtest")
    config = parse_config(CONFIG.format(root=repo_root, qemu_img=QEMU_IMG), "c")
    spec = parse_spec(SPEC, "spec", config)
    with pytest.raises(ImageError, match=r"no user:mine in your repository; yours: none; the admins': deb"):
        with_user_image(spec, config, ctx("svmother"))


@pytest.mark.root
def test_a_hostile_image_is_refused_at_use_in_one_line(repo_root):
    users_image(repo_root, "svmtest", "-u", "-b", "/etc/shadow", "-F", "raw")
    config = parse_config(CONFIG.format(root=repo_root, qemu_img=QEMU_IMG), "c")
    spec = parse_spec(SPEC, "spec", config)
    with pytest.raises(ImageError) as exc:
        with_user_image(spec, config, ctx("svmtest"))
    assert "backing file" in str(exc.value) and "\n" not in str(exc.value)
    assert str(exc.value).startswith("image user:mine: ")


def test_the_prolog_reads_an_admin_image_from_the_node_cache_and_never_caches_a_users(tmp_path):
    from slurm_vm.node.doctor import image_cache_findings
    from slurm_vm.node.prolog import with_cached_base
    base = tmp_path / "deb.qcow2"
    base.write_bytes(os.urandom(1 << 20))
    text = (f"images: {{deb: {{path: {base}, kernel: /k}}}}\nimage_cache: {{dir: {tmp_path}/cache/%n}}\n"
            f"user_images: {{repository: {tmp_path}/u/%u}}\n")
    config = parse_config(text, "c")
    admin = parse_spec("name: web\nimage: deb\n", "spec", config)
    cached = with_cached_base(admin, config, ctx("root"))
    path = cached.images["deb"].path
    assert path.startswith(f"{tmp_path}/cache/n1/") and open(path, "rb").read() == base.read_bytes()
    users = parse_spec(SPEC, "spec", config)
    assert with_cached_base(users, config, ctx("root")) is config
    assert image_cache_findings(config, "n1", fix=False) == []
    with open(path, "r+b") as fh:
        fh.write(b"!")
    found = image_cache_findings(config, "n1", fix=True)
    assert len(found) == 1 and "damaged" in str(found[0]) and found[0].fixed and not os.path.exists(path)
    assert with_cached_base(admin, config, ctx("root")).images["deb"].path == path and os.path.exists(path)
