"""`slurm-vm node check` on a node root whose module, sysctl and bridge go missing one at a time.

The check reads /proc, /lib/modules, /dev and the images under `--root` (a real directory laid out as a node's)
and the links of its network namespace (a real one, with a real bridge). Each missing prerequisite is one line.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid

import pytest
import yaml

pytestmark = pytest.mark.root
SLURM_VM = os.path.join(os.path.dirname(sys.executable), "slurm-vm")
MODULES = ("tun", "bridge", "vxlan", "macvtap", "nf_tables")


def write(root: str, path: str, text: str, mode: int = 0o644) -> str:
    full = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as fh:
        fh.write(text)
    os.chmod(full, mode)
    return full


@pytest.fixture
def node_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace, mknod)")
    root = tempfile.mkdtemp(prefix="deploy-nodecheck-", dir="/var/tmp")
    netns = f"deploychk{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=20)
    try:
        for argv in (["link", "add", "br-vm", "type", "bridge"], ["link", "set", "br-vm", "up"],
                     ["link", "add", "eth1", "type", "veth", "peer", "name", "eth1p"], ["link", "set", "eth1", "up"]):
            subprocess.run(["ip", "-n", netns, *argv], check=True, timeout=20)
        os.chmod(root, 0o755)
        write(root, "/proc/modules", "".join(f"{m} 16384 0 - Live 0x0\n" for m in MODULES))
        write(root, "/proc/sys/kernel/osrelease", "6.1.0-99-amd64\n")
        write(root, "/proc/sys/fs/protected_hardlinks", "1\n")
        for tool in ("/usr/bin/qemu-img", "/usr/bin/qemu-system-x86_64"):
            write(root, tool, "#!/bin/sh\n", 0o755)
        for image in ("/srv/images/tiny.qcow2", "/srv/images/vmlinux"):
            write(root, image, "x")
        os.makedirs(os.path.join(root, "dev/net"))
        os.mknod(os.path.join(root, "dev/net/tun"), stat.S_IFCHR | 0o666, os.makedev(10, 200))
        os.chmod(os.path.join(root, "dev/net/tun"), 0o666)
        os.makedirs(os.path.join(root, "var/lib/slurm-vm"))
        config = {"state_dir": "/var/lib/slurm-vm",
                  "images": {"tiny": {"path": "/srv/images/tiny.qcow2", "kernel": "/srv/images/vmlinux"}},
                  "networks": {"lan": {"kind": "bridge", "bridge": "br-vm", "subnet": "10.9.0.0/24"},
                               "fabric": {"kind": "macvtap", "parent": "eth1"},
                               "private": {"kind": "vxlan", "parent": "eth1", "vni_range": [100, 199],
                                           "vxlan_mode": "unicast", "subnet": "192.168.5.0/24", "mtu": 1450}},
                  "hypervisor": {"default": "qemu"}}
        with open(os.path.join(root, "config.yaml"), "w") as fh:
            yaml.safe_dump(config, fh)
        yield root, netns
    finally:
        subprocess.run(["ip", "netns", "del", netns], timeout=20)
        shutil.rmtree(root, ignore_errors=True)


def check(root: str, netns: str) -> tuple[int, list[str]]:
    proc = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", SLURM_VM, "node", "check", "--quiet",
                           "--root", root, "--config", os.path.join(root, "config.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.stderr == ""
    return proc.returncode, proc.stdout.splitlines()


def test_a_ready_node_passes_then_each_missing_piece_is_one_line(node_root):
    root, netns = node_root
    assert check(root, netns) == (0, [])

    write(root, "/proc/modules", "".join(f"{m} 16384 0 - Live 0x0\n" for m in MODULES if m != "vxlan"))
    rc, lines = check(root, netns)
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0].startswith("FAIL module vxlan:") and "network private" in lines[0] and "modprobe vxlan" in lines[0]
    write(root, "/lib/modules/6.1.0-99-amd64/modules.dep", "kernel/drivers/net/vxlan/vxlan.ko.xz: kernel/net/udp.ko\n")
    assert check(root, netns) == (0, [])   # installed: the kernel loads it on first use

    write(root, "/proc/sys/fs/protected_hardlinks", "0\n")
    rc, lines = check(root, netns)
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0].startswith("FAIL sysctl fs.protected_hardlinks: is 0, needs 1") and "network fabric" in lines[0]
    assert "/etc/sysctl.d/" in lines[0]
    write(root, "/proc/sys/fs/protected_hardlinks", "1\n")

    subprocess.run(["ip", "-n", netns, "link", "del", "br-vm"], check=True, timeout=20)
    rc, lines = check(root, netns)
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0].startswith("FAIL link br-vm: no such interface") and "create bridge br-vm" in lines[0]


def test_unreadable_image_and_tun_mode_are_named(node_root):
    root, netns = node_root
    os.chmod(os.path.join(root, "srv/images/vmlinux"), 0o600)
    os.chmod(os.path.join(root, "dev/net/tun"), 0o600)
    rc, lines = check(root, netns)
    assert rc == 1 and len(lines) == 2, lines
    assert any(line.startswith("FAIL file /srv/images/vmlinux: not readable by job users") for line in lines)
    assert any(line.startswith("FAIL device /dev/net/tun:") and "chmod 0666" in line for line in lines)
