"""docs/install.md, followed literally on a clean Debian root filesystem: the wheel installs, the node check runs.

The blocks marked ```` ```sh compute-node ```` and ```` ```sh login-node ```` run as root in a chroot of a copy of the
trixie rootfs the 24.11 test cluster builds (/var/cache/slurm-vm/rootfs-trixie-*; the shared one is never
changed), with only the Debian and PyPI registries reachable. Then ```` ```sh compute-node-check ```` runs in a
fresh network namespace holding the example config's bridge and parents, first on a ready node, then with a
sysctl, a kernel module and the bridge taken away in turn (bind mounts over /proc files in the chroot's private
mount namespace; the bridge deleted for real): each is one FAIL line.
Cost: copying the rootfs (~600 MB, ~15 s), apt-get update + ovmf/acl (~30 s), building and installing the
wheel with its dependencies (~40 s); about 2 minutes in all. Marked slow and cluster (it needs the 24.11 flavour's
rootfs, and stays out of the quick tier); it runs once, in the 22.05 pass.
"""

from __future__ import annotations

import gzip
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid

import pytest

from devtools.testcluster import ensure_rootfs

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.cluster]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(REPO, "docs", "install.md")
# The registries are reached through this machine's TLS proxy: its CA bundle (as the test cluster's rootfs venv does).
REGISTRY_BINDS = (("/etc/ssl/certs", "/etc/ssl/certs"),)
FENCE = re.compile(r"^```sh ([a-z-]+)\n(.*?)^```$", re.S | re.M)   # our own doc's fences, not tool output


def doc_blocks(kind: str) -> list[str]:
    with open(DOC) as fh:
        return [body for tag, body in FENCE.findall(fh.read()) if tag == kind]


def sh(argv: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def in_chroot(root: str, script: str, netns: str | None = None, binds: tuple[tuple[str, str], ...] = (),
              timeout: float = 900) -> subprocess.CompletedProcess:
    """`script` as root in the chroot, in a private mount namespace with /proc, /dev/pts and the given binds."""
    q = shlex.quote
    mounts = [f"mount -t proc proc {q(root + '/proc')}", f"mount -t devpts devpts {q(root + '/dev/pts')}"]
    mounts += [f"mount --bind {q(src)} {q(root + dst)}" for src, dst in binds]
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LANG": "C.UTF-8", "HOME": "/root"}
    inner = " && ".join(mounts) + f" && exec chroot {q(root)} /bin/sh -ec {q(script)}"
    ns = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
    return sh([*ns, "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", inner], timeout=timeout,
              env=env)


@pytest.fixture(scope="module")
def installed_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot, mounts, a network namespace)")
    if os.environ.get("SLURM_VM_TEST_SLURM", "22.05") != "22.05":
        pytest.skip("runs once, in the 22.05 pass (the Slurm flavour does not matter to it)")
    base = ensure_rootfs(None, [])
    work = tempfile.mkdtemp(prefix="deploy-install-", dir="/var/tmp")
    root = os.path.join(work, "root")
    try:
        os.mkdir(root)
        copy = f"tar -C {shlex.quote(base)} --exclude=./opt/slurm-vm -cf - . | tar -C {shlex.quote(root)} -xpf -"
        assert sh(["sh", "-c", copy], timeout=600).returncode == 0
        shutil.copy("/etc/resolv.conf", os.path.join(root, "etc", "resolv.conf"))
        wheel_dir = os.path.join(work, "dist")
        proc = sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheel_dir, REPO])
        assert proc.returncode == 0, proc.stderr
        for name in os.listdir(wheel_dir):
            shutil.copy(os.path.join(wheel_dir, name), os.path.join(root, "tmp", name))
        shutil.copy(os.path.join(REPO, "etc", "config.example.yaml"), os.path.join(root, "tmp", "config.yaml"))
        for kind in ("compute-node", "login-node"):
            for block in doc_blocks(kind):
                proc = in_chroot(root, block, binds=REGISTRY_BINDS)
                assert proc.returncode == 0, \
                    f"docs/install.md block failed:\n{block}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        yield work, root
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_installed_layout(installed_root):
    _, root = installed_root
    hook = os.path.join(root, "usr/local/sbin/slurm-vm-hook")
    assert os.stat(hook).st_mode & 0o777 == 0o755
    with open(hook) as fh:
        assert "default_venv=/opt/slurm-vm/venv " in fh.read()
    assert os.access(os.path.join(root, "opt/slurm-vm/venv/bin/slurm-vm-prolog"), os.X_OK)
    proc = in_chroot(root, "slurm-vm --version")   # the login node's command on PATH
    assert proc.returncode == 0 and "version" in proc.stdout, proc.stderr


def node_netns() -> str:
    netns = f"deployinst{uuid.uuid4().hex[:6]}"
    for argv in (["netns", "add", netns], ["-n", netns, "link", "add", "br-vm", "type", "bridge"],
                 ["-n", netns, "link", "set", "br-vm", "up"],
                 ["-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
                 ["-n", netns, "link", "set", "eth0", "up"], ["-n", netns, "link", "set", "eth1", "up"]):
        assert sh(["ip", *argv], timeout=30).returncode == 0, argv
    return netns


def prepare_node_files(root: str) -> None:
    """What an admin adds by hand: the images the config names, and a /dev/net/tun job users may open."""
    for name in ("debian-12-genericcloud-amd64.qcow2", "tiny.qcow2", "vmlinux", "tiny-initrd.gz"):
        path = os.path.join(root, "srv/slurm-vm/images", name)
        with open(path, "w") as fh:
            fh.write("image")
        os.chmod(path, 0o644)
    os.makedirs(os.path.join(root, "dev/net"), exist_ok=True)
    tun = os.path.join(root, "dev/net/tun")
    if not os.path.exists(tun):
        os.mknod(tun, stat.S_IFCHR | 0o666, os.makedev(10, 200))
    os.chmod(tun, 0o666)


def without_module(work: str, name: str) -> tuple[tuple[str, str], ...]:
    """Filtered copies of /proc/modules and /proc/config.gz (whichever exist), to bind over the chroot's."""
    binds = []
    if os.path.exists("/proc/modules"):
        with open("/proc/modules") as fh:
            lines = [line for line in fh if line.split()[0] != name]
        path = os.path.join(work, "modules")
        with open(path, "w") as fh:
            fh.writelines(lines)
        binds.append((path, "/proc/modules"))
    if os.path.exists("/proc/config.gz"):
        with gzip.open("/proc/config.gz", "rt") as fh:
            lines = [line for line in fh if not line.startswith(f"CONFIG_{name.upper()}=")]
        path = os.path.join(work, "config.gz")
        with gzip.open(path, "wt") as fh:
            fh.writelines(lines)
        binds.append((path, "/proc/config.gz"))
    return tuple(binds)


def fails(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]


def test_node_check_in_the_installed_root(installed_root):
    work, root = installed_root
    prepare_node_files(root)
    check = doc_blocks("compute-node-check")[0].strip()
    netns = node_netns()
    try:
        ready = in_chroot(root, check + " || echo rc=$?", netns)
        assert fails(ready) == [] and "rc=" not in ready.stdout, ready.stdout + ready.stderr
        assert "ok   module vxlan" in ready.stdout and "ok   link br-vm" in ready.stdout

        zero = os.path.join(work, "zero")
        with open(zero, "w") as fh:
            fh.write("0\n")
        proc = in_chroot(root, check + " || echo rc=$?", netns, ((zero, "/proc/sys/fs/protected_hardlinks"),))
        assert len(fails(proc)) == 1 and fails(proc)[0].startswith("FAIL sysctl fs.protected_hardlinks: is 0")
        assert "rc=1" in proc.stdout

        binds = without_module(work, "vxlan")
        if not binds:
            pytest.skip("this kernel shows its modules neither in /proc/modules nor /proc/config.gz")
        proc = in_chroot(root, check + " || echo rc=$?", netns, binds)
        assert len(fails(proc)) == 1 and fails(proc)[0].startswith("FAIL module vxlan:"), proc.stdout

        assert sh(["ip", "-n", netns, "link", "del", "br-vm"]).returncode == 0
        proc = in_chroot(root, check + " || echo rc=$?", netns)
        assert len(fails(proc)) == 1 and fails(proc)[0].startswith("FAIL link br-vm: no such interface")
    finally:
        sh(["ip", "netns", "del", netns])
