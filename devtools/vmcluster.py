"""A slurm-vm setup on top of the namespace test cluster: admin config for the test guests, node bridges.

Used by the end-to-end tests (tests/fixtures/vmcluster.py), bench/ and the README's demo (scripts/demo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def tiny_cached_base(directory: str) -> str:
    """A base image with data in it, so that copying it into the node cache takes a moment."""
    base = os.path.join(directory, "tiny-cached-base.qcow2")
    if not os.path.exists(base):
        raw = base + ".raw"
        with open(raw, "wb") as fh:
            fh.write(os.urandom(32 << 20))
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, base], check=True, timeout=60)
        os.unlink(raw)
    os.chmod(base, 0o644)
    return base


def test_config(directory: str, state_root: str, underlay: str, guests: dict, transport: str = "9p") -> dict:
    tiny = guests["tiny"]
    base = tiny_base_image(directory)
    images = {
        "tiny": {"path": base, "kernel": tiny["kernel"], "initrd": tiny["initrd"], "cmdline": tiny["cmdline"],
                 "description": "busybox test guest"},
        "tiny-noacpi": {"path": base, "kernel": tiny["kernel"], "initrd": tiny["initrd"],
                        "cmdline": tiny["cmdline"] + " svmtest.noacpi",
                        "description": "busybox test guest that ignores the ACPI power button"},
        "tiny-counter": {"path": base, "kernel": tiny["kernel"], "initrd": tiny["initrd"],
                         "cmdline": tiny["cmdline"] + " svmtest.counter",
                         "description": "busybox test guest printing a counter, boot_id and uptime every second"},
        "tiny-selfoff": {"path": base, "kernel": tiny["kernel"], "initrd": tiny["initrd"],
                         "cmdline": tiny["cmdline"] + " svmtest.poweroff=3",
                         "description": "busybox test guest that powers off 3 s after it is ready"},
    }
    images["tiny-cached"] = {"path": tiny_cached_base(directory), "kernel": tiny["kernel"], "initrd": tiny["initrd"],
                             "cmdline": tiny["cmdline"], "description": "busybox test guest, a base with 32M of data "
                             "(the node image cache's tests)"}
    if "debian" in guests:
        deb = guests["debian"]
        images["debian"] = {"path": deb["image"], "kernel": deb["kernel"], "initrd": deb["initrd"],
                            "cmdline": deb["cmdline"], "description": "Debian 12 with cloud-init"}
    return {
        "state_dir": os.path.join(state_root, "%n"),
        "images": images,
        "networks": {
            "lan": {"kind": "bridge", "bridge": NODE_BRIDGE},
            "lan-open": {"kind": "bridge", "bridge": NODE_BRIDGE, "trusted": True},
            "direct": {"kind": "macvtap", "parent": underlay, "mode": "bridge"},
            "private": {"kind": "vxlan", "parent": underlay, "vni_range": [5000, 5999], "subnet": "192.168.77.0/24"},
            # tests/e2e/test_private_networks.py: a 2-VNI range, unicast segments, addresses managed on a shared bridge
            "pair": {"kind": "vxlan", "parent": underlay, "vni_range": [6000, 6001], "subnet": "192.168.78.0/24"},
            "uni": {"kind": "vxlan", "parent": underlay, "vni_range": [6100, 6199], "vxlan_mode": "unicast",
                    "subnet": "192.168.79.0/24", "subnet6": "fd00:79::/64"},
            "managed": {"kind": "bridge", "bridge": NODE_BRIDGE, "subnet": "10.77.0.0/24",
                        "address_range": ["10.77.0.100", "10.77.0.199"]},
        },
        "allocation_timeout": 8,
        "grace_seconds": GRACE_SECONDS,
        "hypervisor": {"memory_overhead": "320M"},
        "slurm": {"kill_wait": KILL_WAIT},
        "slurm_vm_command": os.path.join(venv_dir(), "bin", "slurm-vm"),
        "log_file": os.path.join(directory, "hooks.log"),
        "mounts": {"allowed": ["$HOME", os.path.join(directory, "shares")], "transport": transport},
        "checkpoint": {"dir": os.path.join(checkpoint_root(directory), "%u")},
        "image_cache": {"dir": os.path.join(directory, "image-cache"), "max_size": "2G"},   # one for all nodes
        "user_images": {"repository": os.path.join(user_images_root(directory), "%u"), "quota": "1G",
                        "max_virtual_size": "4G"},
    }


def checkpoint_root(directory: str) -> str:
    """Checkpoints of the test cluster's users: every node sees it (one machine); users make their own dir."""
    root = os.path.join(directory, "checkpoints")
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o1777)
    return root


def user_images_root(directory: str) -> str:
    """The test cluster's users' image repositories: users make their own dir on their first import."""
    root = os.path.join(directory, "user-images")
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o1777)
    return root


def write_test_config(directory: str, state_root: str, underlay: str, cache: str = GUEST_CACHE,
                      transport: str = "9p") -> str:
    """The admin config of a test cluster; `transport` is QEMU's share device (`mounts.transport`)."""
    config = test_config(directory, state_root, underlay, load_guests(cache), transport)
    path = os.path.join(directory, "config.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    os.chmod(path, 0o644)
    return path


def setup_node_bridges(cluster, config_path: str | None = None) -> None:
    """Each node gets the `lan` bridge with the same address: nodes are separate network namespaces. With the
    slurm-vm config, each node then runs `slurm-vm node setup` (the VXLAN underlay kept to root), as an admin
    runs it at boot."""
    for node in cluster.nodes:
        if cluster.node_exec(node, ["ip", "link", "show", NODE_BRIDGE], timeout=20).returncode != 0:
            _node_step(cluster, node, ["ip", "link", "add", NODE_BRIDGE, "type", "bridge"])
        _node_step(cluster, node, ["ip", "addr", "replace", NODE_BRIDGE_ADDR, "dev", NODE_BRIDGE])
        _node_step(cluster, node, ["ip", "link", "set", NODE_BRIDGE, "up"])
        if config_path is not None:
            _node_step(cluster, node, ["env", f"SLURM_VM_CONFIG={config_path}",
                                       os.path.join(venv_dir(), "bin", "slurm-vm"), "node", "setup"])


def _node_step(cluster, node: str, argv: list[str]) -> None:
    proc = cluster.node_exec(node, argv, timeout=20)
    if proc.returncode != 0:
        raise SetupError(f"cannot set up {node}: {' '.join(argv)}: {proc.stderr.strip()}")

TEST_ROOT = "/var/lib/slurm-vm-test"
ENDED_STATES = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
                "DEADLINE"}
TEST_USER = "svmtest"
OTHER_USER = "svmother"


@dataclass
class VMCluster:
    cluster: object
    config_path: str
    directory: str
    state_root: str

    def slurm_vm(self, *args: str, user: str = TEST_USER, timeout: int = 60,
                 input: str | None = None) -> subprocess.CompletedProcess:
        argv = [os.path.join(venv_dir(), "bin", "slurm-vm"), *args]
        return self.cluster.client(argv, user=user, env={"SLURM_VM_CONFIG": self.config_path}, timeout=timeout,
                                   input=input)

    def slurm_vm_argv(self, *args: str, user: str = TEST_USER) -> list[str]:
        """The command line of `slurm-vm ARGS` as `user` on the cluster's login side (for pexpect)."""
        argv = [os.path.join(venv_dir(), "bin", "slurm-vm"), *args]
        return self.cluster.client_argv(argv, user=user, env={"SLURM_VM_CONFIG": self.config_path})

    def submit(self, spec_text: str, *sbatch: str, name: str = "vm", user: str = TEST_USER) -> int:
        spec = os.path.join(self.directory, "specs", f"{name}-{time.monotonic_ns()}.yaml")
        with open(spec, "w") as fh:
            fh.write(spec_text)
        os.chmod(spec, 0o644)
        out = os.path.join(self.directory, "out", "%j.out")
        proc = self.slurm_vm("submit", "--parsable", spec, f"--output={out}", *sbatch, user=user)
        assert proc.returncode == 0, proc.stderr
        return int(proc.stdout.strip())

    def output(self, job_id: int) -> str:
        try:
            with open(os.path.join(self.directory, "out", f"{job_id}.out"), errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def node_state(self, node: str) -> str:
        return os.path.join(self.state_root, node)

    def serial_log(self, node: str, job_id: int) -> str:
        try:
            with open(os.path.join(self.node_state(node), "jobs", str(job_id), "serial.log"), errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def wait_serial(self, node: str, job_id: int, marker: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.serial_log(node, job_id)
            if marker in text:
                return text
            time.sleep(0.5)
        raise AssertionError(f"{marker!r} not in serial log of job {job_id} after {timeout}s:\n"
                             f"{self.serial_log(node, job_id)[-2000:]}\njob output:\n{self.output(job_id)[-2000:]}")

    def serial_console(self, node: str, job_id: int, timeout: float = 60):
        """A connection to the job's serial console (devtools.serialconsole): `.run("cmd")` -> its output."""
        from devtools.serialconsole import SerialConsole, job_serial_socket
        return SerialConsole(job_serial_socket(self.node_state(node), job_id), timeout)

    def job_field(self, job_id: int, fmt: str) -> str:
        proc = self.cluster.client(["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", fmt])
        return proc.stdout.strip()

    def wait_state(self, job_id: int, states: set[str], timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.job_field(job_id, "%T")
            if state in states:
                return state
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} is {state or 'gone'}, not {states}, after {timeout}s; "
                             f"output:\n{self.output(job_id)[-3000:]}")

    def wait_gone_or_ended(self, job_id: int, timeout: float = 120) -> str:
        """The job's final state: from sacct where the cluster has accounting storage, else from squeue."""
        state = self.wait_state(job_id, ENDED_STATES, timeout)
        return self.accounted_state(job_id) if getattr(self.cluster, "accounting", False) else state

    def cancel_test_users_jobs(self, timeout: float = 120) -> None:
        """After a failed test: cancel what svmtest and svmother still run or queue on this cluster and wait
        until Slurm has ended it (epilogs included), so the next test on the session's cluster starts clean."""
        users = (TEST_USER, OTHER_USER)
        for user in users:
            self.cluster.client(["scancel", "-u", user])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.cluster.client(["squeue", "-h", "-u", ",".join(users), "-o", "%i"]).stdout.strip():
                return
            time.sleep(0.5)

    def accounted_state(self, job_id: int, timeout: float = 30) -> str:
        """The state of the job's last run in the accounting storage, once it has ended there (slurmctld sends
        the end to slurmdbd shortly after the job ends)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            out = self.cluster.client(["sacct", "-X", "-P", "-n", "-j", str(job_id), "-S", "2000-01-01",
                                       "-o", "State"]).stdout.split("\n")[0].strip()
            state = out.split(" ")[0]
            if state in ENDED_STATES:
                return state
            time.sleep(0.5)
        raise AssertionError(f"sacct says job {job_id} is {state or 'unknown'}, not ended, after {timeout}s")

    def leaks(self, job_id: int | None = None) -> list[str]:
        """slurm-vm objects left on any node: job dirs, journals, notes, svm links, VMM and virtiofsd processes."""
        found = []
        for node in self.cluster.nodes:
            state = self.node_state(node)
            for sub in ("jobs", "journal", "nics", "trash"):
                directory = os.path.join(state, sub)
                if os.path.isdir(directory):
                    found += [f"{node}:{sub}/{n}" for n in os.listdir(directory)
                              if job_id is None or n.split(".")[0] == str(job_id)]
            proc = self.cluster.node_exec(node, ["ip", "-o", "link", "show"], timeout=20)
            for line in proc.stdout.splitlines():
                name = line.split(":", 2)[1].strip().split("@")[0]
                if name.startswith("svm") and not name.startswith("svmgd") and (
                        job_id is None or name.startswith(f"svm{job_id}n")):   # svmgd*: the node's VXLAN guards
                    found.append(f"{node}:link {name}")
            tables = self.cluster.node_exec(node, ["nft", "-j", "list", "tables", "netdev"], timeout=20).stdout
            for item in json.loads(tables or '{"nftables": []}')["nftables"]:
                name = item.get("table", {}).get("name", "")
                if name.startswith("svm_") and (job_id is None or name == f"svm_{job_id}"):
                    found.append(f"{node}:nft table {name}")
        procs = subprocess.run(["pgrep", "-a", "-f", f"{self.state_root}/"], capture_output=True, text=True,
                               timeout=10).stdout
        found += [f"process {line}" for line in procs.splitlines()
                  if "qemu" in line or "cloud-hyp" in line or "virtiofsd" in line]
        return found

    def wait_no_leaks(self, job_id: int | None = None, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            leaks = self.leaks(job_id)
            if not leaks or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert leaks == [], leaks
