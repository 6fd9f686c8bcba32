"""Users' own images through real Slurm, the real hooks and the tiny guest: `slurm-vm image import` of a raw and a
qcow2 file, VMs booting from `image: user:NAME` (the guest reads the image's marker from its disk), another user
can neither list nor boot them, and an image made hostile after its import is refused at use without a drain."""

from __future__ import annotations

import json
import os
import pwd
import subprocess

import pytest

from devtools.vmcluster import venv_dir
from tests.e2e.test_checkpoint import counters, wait_count

pytestmark = [pytest.mark.cluster]

SPEC = """name: {name}
image: {image}
memory: 256M
cloud_init:
  user_data: |
    #cloud-config
    runcmd:
      - head -c 32 /dev/vda
"""


def user_src_dir(vc, user: str = "svmtest") -> str:
    """A directory of `user`'s own, for the files they import."""
    pw = pwd.getpwnam(user)
    path = os.path.join(vc.directory, f"src-{user}")
    os.makedirs(path, exist_ok=True)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, 0o700)
    return path


def users_file(vc, name: str, data: bytes, user: str = "svmtest") -> str:
    pw = pwd.getpwnam(user)
    path = os.path.join(user_src_dir(vc, user), name)
    with open(path, "wb") as fh:
        fh.write(data)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def marker(kind: str) -> bytes:
    return f"SVM-UIMG-{kind}-MARK".ljust(31, "-").encode() + b"\n"


def qemu_img_as(user: str, *args: str) -> None:
    pw = pwd.getpwnam(user)
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60, user=pw.pw_uid,
                   group=pw.pw_gid, extra_groups=[])


def import_as(vc, source: str, name: str, *extra: str, user: str = "svmtest"):
    return vc.slurm_vm("image", "import", source, name, "--boot", "tiny", *extra, user=user, timeout=120)


@pytest.mark.guest
def test_import_boot_and_isolation(vm_cluster):
    vc = vm_cluster
    raw = users_file(vc, "disk.img", marker("raw") + b"\0" * ((4 << 20) - 32))
    qsrc = users_file(vc, "staging.raw", marker("qcow2") + b"\0" * ((4 << 20) - 32))
    qcow = os.path.join(os.path.dirname(qsrc), "disk.qcow2")
    qemu_img_as("svmtest", "convert", "-f", "raw", "-O", "qcow2", qsrc, qcow)
    for src, name in ((raw, "fromraw"), (qcow, "fromqcow")):
        proc = import_as(vc, src, name)
        assert proc.returncode == 0, proc.stderr
    listing = vc.slurm_vm("image", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    assert {i["name"]: i["boot"] for i in json.loads(listing.stdout)} == {"user:fromqcow": "tiny",
                                                                           "user:fromraw": "tiny"}
    both = json.loads(vc.slurm_vm("images", "--json").stdout)
    assert {(i["name"], i["owner"]) for i in both} >= {("tiny", "admin"), ("user:fromraw", "you")}

    jobs = {kind: vc.submit(SPEC.format(name=f"u{kind}", image=f"user:from{kind}"), name=f"u{kind}")
            for kind in ("raw", "qcow")}
    # Another user: sees none of svmtest's images, and the same name in a spec means *their* repository.
    other_list = vc.slurm_vm("image", "list", "--json", user="svmother")
    assert other_list.returncode == 0 and json.loads(other_list.stdout) == [], other_list.stdout
    other_info = vc.slurm_vm("image", "info", "fromraw", user="svmother")
    assert other_info.returncode != 0 and "no user:fromraw in your repository; yours: none" in other_info.stderr
    spec = os.path.join(vc.directory, "specs", "uother.yaml")
    with open(spec, "w") as fh:
        fh.write(SPEC.format(name="uother", image="user:fromraw"))
    os.chmod(spec, 0o644)
    refused = vc.slurm_vm("submit", spec, user="svmother")
    assert refused.returncode != 0 and "no user:fromraw in your repository; yours: none" in refused.stderr
    # svmother's own `fromraw`, gone before the job starts: the prolog looks in svmother's repository only.
    mine = users_file(vc, "own.img", b"\0" * (1 << 20), user="svmother")
    assert import_as(vc, mine, "fromraw", user="svmother").returncode == 0
    theirs = vc.submit(SPEC.format(name="uother", image="user:fromraw"), "--hold", name="uother", user="svmother")
    assert vc.slurm_vm("image", "rm", "fromraw", user="svmother").returncode == 0
    vc.cluster.client(["scontrol", "release", str(theirs)])
    try:
        for kind, job in jobs.items():
            vc.wait_state(job, {"RUNNING"}, timeout=120)
            node = vc.job_field(job, "%N")
            expected = marker("qcow2" if kind == "qcow" else "raw").decode().strip()
            vc.wait_serial(node, job, expected, timeout=120)
        assert vc.wait_gone_or_ended(theirs, timeout=90) == "FAILED"
        out = vc.output(theirs)
        assert "no user:fromraw in your repository" in out, out
    finally:
        for job in jobs.values():
            vc.cluster.client(["scancel", str(job)])
    for job in (*jobs.values(), theirs):
        vc.wait_gone_or_ended(job, timeout=120)
        vc.wait_no_leaks(job)
    assert vc.cluster.client(["sinfo", "-h", "-t", "drain", "-o", "%N"]).stdout.strip() == ""
    assert vc.slurm_vm("image", "rm", "fromraw").returncode == 0
    assert vc.slurm_vm("image", "rm", "fromqcow").returncode == 0


def test_hostile_images_refused_at_import_and_at_use_without_a_drain(vm_cluster):
    vc = vm_cluster
    src = user_src_dir(vc)
    evil = os.path.join(src, "shadow.qcow2")
    qemu_img_as("svmtest", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", evil, "1M")
    huge = os.path.join(src, "huge.qcow2")
    qemu_img_as("svmtest", "create", "-q", "-f", "qcow2", huge, "1P")
    fake = users_file(vc, "fake.qcow2", b"\0" * (1 << 20))
    for path, why in ((evil, "backing file"), (huge, "above the site's limit"), (fake, "format mismatch")):
        proc = import_as(vc, path, "evil")
        assert proc.returncode != 0 and why in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, \
            proc.stderr
    assert not os.listdir(os.path.join(vc.directory, "user-images", "svmtest"))   # nothing half-made

    # A good import, then the user swaps the file for one whose backing file is /etc/shadow: refused at use.
    good = users_file(vc, "good.img", b"\0" * (1 << 20))
    assert import_as(vc, good, "swapped").returncode == 0
    target = os.path.join(vc.directory, "user-images", "svmtest", "swapped.qcow2")
    os.unlink(target)
    qemu_img_as("svmtest", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", target, "1M")
    job = vc.submit(SPEC.format(name="uevil", image="user:swapped"), name="uevil")
    assert vc.wait_gone_or_ended(job, timeout=90) == "FAILED"
    out = vc.output(job)
    assert "image user:swapped" in out and "backing file" in out, out
    vc.wait_no_leaks(job)
    assert vc.cluster.client(["sinfo", "-h", "-t", "drain", "-o", "%N"]).stdout.strip() == ""
    assert vc.slurm_vm("image", "rm", "swapped").returncode == 0


WRITER = """name: {name}
image: tiny-counter
memory: 256M
disk: 96M
cloud_init:
  user_data: |
    #cloud-config
    runcmd:
      - echo SVMSAVEDMARK42 | dd of=/dev/vda bs=512 seek=2048 conv=notrunc
      - sync
      - echo MARK-WRITTEN
"""

READER = """name: {name}
image: user:{image}
memory: 256M
cloud_init:
  user_data: |
    #cloud-config
    runcmd:
      - dd if=/dev/vda bs=512 skip=2048 count=1 | head -c 14
      - echo READ-DONE
"""


@pytest.mark.guest
def test_save_a_running_vm_and_boot_the_copy(vm_cluster):
    vc = vm_cluster
    job = vc.submit(WRITER.format(name="saver"), name="saver")
    readers: list[int] = []
    try:
        vc.wait_state(job, {"RUNNING"}, timeout=120)
        node = vc.job_field(job, "%N")
        vc.wait_serial(node, job, "\nMARK-WRITTEN", timeout=120)
        other = vc.slurm_vm("image", "save", str(job), "stolen", user="svmother", timeout=120)
        assert other.returncode != 0 and "not your VM" in other.stderr, other.stderr
        proc = vc.slurm_vm("image", "save", "saver", "saved", timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "as user:saved" in proc.stdout and "keeps running" in proc.stdout, proc.stdout
        assert "no guest agent: crash-consistent" in proc.stdout, proc.stdout
        # The original guest runs on: one boot, still counting after the save.
        before = counters(vc.serial_log(node, job))
        after = wait_count(vc, node, job, before[-1][0] + 3)
        assert len({boot for _, boot, _ in after}) == 1 and vc.job_field(job, "%T") == "RUNNING"
        info = json.loads(vc.slurm_vm("image", "info", "saved", "--json").stdout)
        assert info["boot"] == "tiny-counter" and info["virtual_size"] == 96 << 20, info
        assert vc.slurm_vm("image", "list", "--json", user="svmother").stdout.strip() == "[]"
        readers.append(vc.submit(READER.format(name="reader", image="saved"), name="reader"))
        vc.wait_state(readers[0], {"RUNNING"}, timeout=120)
        rnode = vc.job_field(readers[0], "%N")
        log = vc.wait_serial(rnode, readers[0], "READ-DONE", timeout=120)
        assert "SVMSAVEDMARK42" in log, log[-2000:]
        assert vc.job_field(job, "%T") == "RUNNING"
    finally:
        for j in (job, *readers):
            vc.cluster.client(["scancel", str(j)])
    for j in (job, *readers):
        vc.wait_gone_or_ended(j, timeout=120)
        vc.wait_no_leaks(j)
    assert vc.slurm_vm("image", "rm", "saved").returncode == 0


CACHED = """name: {name}
image: tiny-cached
memory: 256M
"""


def cache_lines(vc, jobs) -> list[str]:
    with open(os.path.join(vc.directory, "hooks.log"), errors="replace") as fh:
        return [line for line in fh if "image cache:" in line and any(f"job {j}:" in line for j in jobs)]


@pytest.mark.guest
def test_node_cache_filled_once_for_concurrent_jobs_and_a_damaged_copy_refilled(vm_cluster):
    vc = vm_cluster
    cache = os.path.join(vc.directory, "image-cache")
    for name in os.listdir(cache) if os.path.isdir(cache) else []:
        os.unlink(os.path.join(cache, name))
    node = vc.cluster.nodes[0]
    jobs = [vc.submit(CACHED.format(name=f"cache{i}"), f"--nodelist={node}", name=f"cache{i}") for i in range(2)]
    later: list[int] = []
    try:
        for job in jobs:
            vc.wait_state(job, {"RUNNING"}, timeout=120)
            vc.wait_serial(node, job, "SLURM-VM-TEST ready", timeout=120)
        lines = cache_lines(vc, jobs)
        assert len(lines) == 1 and "copied" in lines[0], lines
        entry = [n for n in os.listdir(cache) if n.endswith(".img")]
        assert len(entry) == 1
        for job in jobs:                   # the node's two cores are theirs: end them before the next job
            vc.cluster.client(["scancel", str(job)])
            vc.wait_gone_or_ended(job, timeout=120)
        with open(os.path.join(cache, entry[0]), "r+b") as fh:
            fh.seek(1 << 20)
            fh.write(b"damage")
        later.append(vc.submit(CACHED.format(name="cache2"), f"--nodelist={node}", name="cache2"))
        vc.wait_state(later[0], {"RUNNING"}, timeout=120)
        vc.wait_serial(node, later[0], "SLURM-VM-TEST ready", timeout=120)
        lines = cache_lines(vc, later)
        assert len(lines) == 1 and "refilled a damaged copy" in lines[0], lines
        doctor = vc.cluster.node_exec(node, ["env", f"SLURM_VM_CONFIG={vc.config_path}",
                                             os.path.join(venv_dir(), "bin", "slurm-vm"),
                                             "node", "doctor", "--node", node], timeout=60)
        assert "image cache" not in doctor.stdout, doctor.stdout
    finally:
        for job in (*jobs, *later):
            vc.cluster.client(["scancel", str(job)])
    for job in (*jobs, *later):
        vc.wait_gone_or_ended(job, timeout=120)
        vc.wait_no_leaks(job)


DEBIAN = """name: {name}
image: {image}
memory: 512M
time: "15:00"
"""


@pytest.mark.guest
@pytest.mark.slow
def test_save_a_debian_vm_frozen_through_its_agent(vm_cluster):
    """A file the guest wrote but never synced is in the copy: the agent froze (and so flushed) the filesystems."""
    vc = vm_cluster
    if "debian" not in open(vc.config_path).read():
        pytest.skip("the Debian test guest is not built: scripts/build-test-guests --only debian")
    job = vc.submit(DEBIAN.format(name="debsave", image="debian"), name="debsave")
    try:
        waited = vc.slurm_vm("wait", "debsave", "--timeout", "400", timeout=420)
        assert waited.returncode == 0, waited.stderr
        wrote = vc.slurm_vm("exec", "debsave", "--", "sh", "-c", "echo FROZEN-MARK-7 > /root/saved-marker",
                            timeout=120)
        assert wrote.returncode == 0, wrote.stderr
        saved = vc.slurm_vm("image", "save", "debsave", "debsaved", timeout=900)
        assert saved.returncode == 0, saved.stdout + saved.stderr
        assert "frozen through its guest agent" in saved.stdout, saved.stdout
        thawed = vc.slurm_vm("exec", "debsave", "--", "sh", "-c", "echo still > /root/after", timeout=120)
        assert thawed.returncode == 0, thawed.stderr          # thawed: the guest writes on
        # The copy, read offline (the Debian guest's disk is one ext4 filesystem): booting it is the tiny test's job.
        copy = os.path.join(vc.directory, "user-images", "svmtest", "debsaved.qcow2")
        raw = os.path.join(vc.directory, "debsaved.raw")
        subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", copy, raw], check=True, timeout=300)
        try:
            read = subprocess.run(["debugfs", "-R", "cat /root/saved-marker", raw], capture_output=True, text=True,
                                  timeout=60)
        finally:
            os.unlink(raw)
        assert read.stdout.strip() == "FROZEN-MARK-7", (read.stdout, read.stderr)
    finally:
        vc.cluster.client(["scancel", str(job)])
    vc.wait_gone_or_ended(job, timeout=180)
    vc.wait_no_leaks(job)
    assert vc.slurm_vm("image", "rm", "debsaved").returncode == 0
