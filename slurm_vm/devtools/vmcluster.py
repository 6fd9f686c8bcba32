"""A slurm-vm setup on top of the namespace test cluster: admin config for the test guests, node bridges.

Used by the end-to-end tests (tests/fixtures/vmcluster.py) and by the README's demo (scripts/demo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

GUEST_CACHE = os.environ.get("SLURM_VM_TEST_CACHE", "/var/cache/slurm-vm/guests")
NODE_BRIDGE = "vmbr0"
NODE_BRIDGE_ADDR = "10.77.0.1/24"
GRACE_SECONDS = 12
KILL_WAIT = 20


class SetupError(Exception):
    pass


def venv_dir() -> str:
    return os.path.dirname(os.path.dirname(sys.executable))


def load_guests(cache: str = GUEST_CACHE) -> dict:
    path = os.path.join(cache, "guests.json")
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise SetupError(f"test guests not built ({path} missing): run scripts/build-test-guests") from None


def tiny_base_image(directory: str) -> str:
    """The tiny guest boots from its initramfs; its 'base image' is an empty qcow2 for the overlay."""
    base = os.path.join(directory, "tiny-base.qcow2")
    if not os.path.exists(base):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "64M"], check=True, timeout=30)
    os.chmod(base, 0o644)
    return base


def test_config(directory: str, state_root: str, underlay: str, guests: dict) -> dict:
    tiny = guests["tiny"]
    base = tiny_base_image(directory)
    images = {
        "tiny": {"path": base, "kernel": tiny["kernel"], "initrd": tiny["initrd"], "cmdline": tiny["cmdline"],
                 "description": "busybox test guest"},
        "tiny-noacpi": {"path": base, "kernel": tiny["kernel"], "initrd": tiny["initrd"],
                        "cmdline": tiny["cmdline"] + " svmtest.noacpi",
                        "description": "busybox test guest that ignores the ACPI power button"},
        "tiny-selfoff": {"path": base, "kernel": tiny["kernel"], "initrd": tiny["initrd"],
                         "cmdline": tiny["cmdline"] + " svmtest.poweroff=3",
                         "description": "busybox test guest that powers off 3 s after it is ready"},
    }
    if "debian" in guests:
        deb = guests["debian"]
        images["debian"] = {"path": deb["image"], "kernel": deb["kernel"], "initrd": deb["initrd"],
                            "cmdline": deb["cmdline"], "description": "Debian 12 with cloud-init"}
    return {
        "state_dir": os.path.join(state_root, "%n"),
        "images": images,
        "networks": {
            "lan": {"kind": "bridge", "bridge": NODE_BRIDGE},
            "private": {"kind": "vxlan", "parent": underlay, "vni_range": [5000, 5999], "subnet": "192.168.77.0/24"},
        },
        "grace_seconds": GRACE_SECONDS,
        "hypervisor": {"memory_overhead": "320M"},
        "slurm": {"kill_wait": KILL_WAIT},
        "slurm_vm_command": os.path.join(venv_dir(), "bin", "slurm-vm"),
        "log_file": os.path.join(directory, "hooks.log"),
    }


def write_test_config(directory: str, state_root: str, underlay: str, cache: str = GUEST_CACHE) -> str:
    config = test_config(directory, state_root, underlay, load_guests(cache))
    path = os.path.join(directory, "config.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    os.chmod(path, 0o644)
    return path


def setup_node_bridges(cluster) -> None:
    """Each node gets the `lan` bridge with the same address: nodes are separate network namespaces."""
    script = (f"ip link show {NODE_BRIDGE} >/dev/null 2>&1 || ip link add {NODE_BRIDGE} type bridge; "
              f"ip addr replace {NODE_BRIDGE_ADDR} dev {NODE_BRIDGE}; ip link set {NODE_BRIDGE} up")
    for node in cluster.nodes:
        proc = cluster.node_exec(node, ["sh", "-c", script], timeout=20)
        if proc.returncode != 0:
            raise SetupError(f"cannot set up {NODE_BRIDGE} on {node}: {proc.stderr.strip()}")
