"""A fake compute node for the hook tests: a network namespace with a bridge, a state dir, a config.

Hooks run as subprocesses through `nsenter --net=`, exactly as slurmd runs them inside a node.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys

import yaml

from slurm_vm import transport
from slurm_vm.node.prepare import STEPS as PREPARE_STEPS

VENV_BIN = os.path.dirname(sys.executable)
USER = "svmtest"
OTHER = "svmother"
STEPS = tuple(name for name, _ in PREPARE_STEPS)


def ensure_user(name: str, uid: int) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", "-u", str(uid), name], check=True, timeout=30)
        return pwd.getpwnam(name)


class Node:
    """One fake compute node: a network namespace with a bridge, a state dir, a config."""

    def __init__(self, tmp: str, netns: str):
        self.tmp = tmp
        self.netns = netns
        self.state = os.path.join(tmp, "state")
        self.base = os.path.join(tmp, "images", "base.qcow2")
        os.makedirs(os.path.dirname(self.base))
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", self.base, "32M"], check=True, timeout=30)
        os.chmod(os.path.dirname(self.base), 0o755)
        os.chmod(self.base, 0o644)
        self.config_path = os.path.join(tmp, "config.yaml")
        self.write_config({})

    def write_config(self, extra: dict) -> None:
        config = {
            "state_dir": self.state,
            "images": {"base": {"path": self.base, "kernel": "/boot/vmlinux-test", "cmdline": "console=ttyS0"}},
            "networks": {"lan": {"kind": "bridge", "bridge": "br-vm"},
                         "staff": {"kind": "bridge", "bridge": "br-vm", "allowed_users": ["nobody"]}},
            "grace_seconds": 5,
            "slurm": {"kill_wait": 30, "bin_dir": "/nonexistent"},
        }
        config.update(extra)
        with open(self.config_path, "w") as fh:
            yaml.safe_dump(config, fh)

    def env(self, job_id: int | str, spec_text: str | None, uid: int | str | None = None,
            comment: str | None = None) -> dict[str, str]:
        user = pwd.getpwnam(USER)
        env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": str(job_id),
               "SLURM_JOB_UID": str(user.pw_uid if uid is None else uid), "SLURM_JOB_GID": str(user.pw_gid),
               "SLURM_JOB_USER": USER, "SLURMD_NODENAME": "node1", "SLURM_JOB_NODELIST": "node1",
               "SLURM_CLUSTER_NAME": "test", "SLURM_VM_CONFIG": self.config_path,
               "SLURM_SCRIPT_CONTEXT": "prolog_slurmd"}
        if comment is not None:
            env["SLURM_JOB_COMMENT"] = comment
        elif spec_text is not None:
            env["SLURM_JOB_COMMENT"] = transport.legacy_inline_comment(spec_text)   # no Slurm to read a script from
        return env

    def hook(self, which: str, env: dict[str, str]) -> subprocess.CompletedProcess:
        env = {**env, "SLURM_SCRIPT_CONTEXT": f"{which}_slurmd"}   # as slurmd sets it
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.netns}", os.path.join(VENV_BIN, f"slurm-vm-{which}")],
                              env=env, capture_output=True, text=True, timeout=120)

    def prolog(self, job_id, spec_text, **kw) -> subprocess.CompletedProcess:
        return self.hook("prolog", self.env(job_id, spec_text, **kw))

    def epilog(self, job_id, spec_text, **kw) -> subprocess.CompletedProcess:
        return self.hook("epilog", self.env(job_id, spec_text, **kw))

    def links(self) -> dict[str, dict]:
        out = subprocess.run(["ip", "-n", self.netns, "-j", "-d", "link", "show"], capture_output=True, text=True,
                             timeout=20, check=True).stdout
        return {link["ifname"]: link for link in json.loads(out)}

    def leftovers(self, job_id: int) -> list[str]:
        found = [name for name in self.links() if name.startswith(f"svm{job_id}n")]
        for sub in ("jobs", "journal", "nics", "trash"):
            directory = os.path.join(self.state, sub)
            if os.path.isdir(directory):
                found += [f"{sub}/{n}" for n in os.listdir(directory) if n.split(".")[0] == str(job_id)]
        tables = subprocess.run(["ip", "netns", "exec", self.netns, "nft", "-j", "list", "tables", "netdev"],
                                capture_output=True, text=True, timeout=20, check=True).stdout
        found += [f"nft table {t['table']['name']}" for t in json.loads(tables)["nftables"]
                  if "table" in t and t["table"]["name"] == f"svm_{job_id}"]
        locks = os.path.join(self.state, "locks")
        if os.path.isdir(locks):
            for root, _, files in os.walk(locks):
                for name in files:
                    with open(os.path.join(root, name), errors="replace") as fh:
                        if str(job_id) in fh.read().split():
                            found.append(f"lock {name}")
        return found


SPEC = """name: web
image: base
cpus: 1
memory: 256M
disk: 64M
networks:
  - network: lan
cloud_init:
  hostname: webhost
  user_data: |
    #cloud-config
    runcmd: [echo hi]
"""


