"""The real prolog and epilog, as root, inside a private network namespace with Slurm-shaped environments.

Each test gets its own node (tests/fixtures/hooknode.py): namespace `tk<N>` with a bridge `br-vm`.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from devtools.hooknode import SPEC, STEPS, USER, VENV_BIN

pytestmark = pytest.mark.root

def test_prolog_prepares_and_epilog_removes_everything(hook_node):
    node = hook_node
    user = pwd.getpwnam(USER)
    proc = node.prolog(101, SPEC)
    assert proc.returncode == 0, proc.stderr
    links = node.links()
    tap = links["svm101n0"]
    assert tap["linkinfo"]["info_kind"] == "tun"
    assert tap["linkinfo"]["info_data"]["user"] in (USER, user.pw_uid, str(user.pw_uid))
    assert tap.get("master") == "br-vm"
    rules = json.loads(subprocess.run(["ip", "netns", "exec", node.netns, "nft", "-j", "list", "table", "netdev",
                                       "svm_101"], capture_output=True, text=True, check=True, timeout=20).stdout)
    hooked = [i["chain"] for i in rules["nftables"] if "chain" in i and "hook" in i["chain"]]
    assert [(c["hook"], c["policy"]) for c in hooked] == [("ingress", "drop")]
    text = subprocess.run(["ip", "netns", "exec", node.netns, "nft", "list", "table", "netdev", "svm_101"],
                          capture_output=True, text=True, check=True, timeout=20).stdout
    assert 'device "svm101n0"' in text     # nft 1.0.6's JSON listing omits the device
    jdir = os.path.join(node.state, "jobs", "101")
    st = os.stat(jdir)
    assert (st.st_uid, st.st_mode & 0o777) == (user.pw_uid, 0o700)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", os.path.join(jdir, "overlay.qcow2")],
                                     capture_output=True, text=True, check=True, timeout=30).stdout)
    assert info["backing-filename"] == node.base
    assert info["virtual-size"] == 64 << 20
    definition = json.load(open(os.path.join(jdir, "vm.json")))
    assert definition["nics"][0]["tap"] == "svm101n0"
    assert definition["disks"][0]["path"].endswith("overlay.qcow2")
    iso = os.path.join(jdir, "seed.iso")
    isoinfo = subprocess.run(["isoinfo", "-d", "-i", iso], capture_output=True, text=True, timeout=30)
    assert "Volume id: cidata" in isoinfo.stdout
    listing = subprocess.run(["isoinfo", "-R", "-f", "-i", iso], capture_output=True, text=True, timeout=30).stdout
    assert {"/meta-data", "/user-data", "/network-config"} <= set(listing.split())
    user_data = subprocess.run(["isoinfo", "-R", "-i", iso, "-x", "/user-data"], capture_output=True,
                               text=True, timeout=30).stdout
    assert "runcmd" in user_data
    network = yaml.safe_load(subprocess.run(["isoinfo", "-R", "-i", iso, "-x", "/network-config"],
                                            capture_output=True, text=True, timeout=30).stdout)
    eth = next(iter(network["ethernets"].values()))
    assert eth["dhcp4"] is True     # a static address would be held cluster-wide: through Slurm (the e2e tests)
    assert eth["match"]["macaddress"] == definition["nics"][0]["mac"]

    proc = node.epilog(101, SPEC)
    assert proc.returncode == 0, proc.stderr
    assert node.leftovers(101) == []
    assert os.path.exists(node.base)
    again = node.epilog(101, SPEC)
    assert again.returncode == 0, again.stderr


def test_epilog_without_prolog_is_fine(hook_node):
    node = hook_node
    proc = node.epilog(102, SPEC)
    assert proc.returncode == 0, proc.stderr
    assert node.leftovers(102) == []


def test_not_a_vm_job_costs_nothing(hook_node):
    node = hook_node
    env = node.env(103, None)
    env.pop("SLURM_JOB_COMMENT", None)
    proc = node.hook("prolog", env)
    assert proc.returncode == 0 and proc.stderr == ""
    assert not os.path.exists(node.state)


@pytest.mark.parametrize("step", STEPS)
def test_fault_at_each_step_leaves_nothing(hook_node, step):
    node = hook_node
    os.makedirs(node.state, exist_ok=True)
    spec = SPEC + "volumes:\n  - path: " + os.path.join(node.tmp, "vol.img") + "\n"
    vol = os.path.join(node.tmp, "vol.img")
    with open(vol, "wb") as fh:
        fh.truncate(1 << 20)
    os.chown(vol, 4201, pwd.getpwnam(USER).pw_gid)
    with open(os.path.join(node.state, "fault-inject"), "w") as fh:
        fh.write(step)
    proc = node.prolog(110, spec)
    assert proc.returncode == 1, proc.stderr
    assert f"step {step}" in proc.stderr
    assert node.leftovers(110) == []
    os.unlink(os.path.join(node.state, "fault-inject"))
    assert node.epilog(110, spec).returncode == 0
    assert node.leftovers(110) == []


def test_prolog_killed_midway_is_cleaned_by_epilog(hook_node):
    """SIGKILL at several moments of a real prolog; the epilog must always leave nothing."""
    node = hook_node
    for delay in (0.05, 0.15, 0.3, 0.6):
        job = 120 + int(delay * 100)
        env = node.env(job, SPEC)
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{node.netns}",
                                 os.path.join(VENV_BIN, "slurm-vm-prolog")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.kill()
        proc.wait(timeout=30)
        assert node.epilog(job, SPEC).returncode == 0
        assert node.leftovers(job) == []


def test_twenty_concurrent_prologs_then_epilogs(hook_node):
    node = hook_node
    jobs = list(range(200, 220))
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda j: node.prolog(j, SPEC), jobs))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    links = node.links()
    assert all(links[f"svm{j}n0"].get("master") == "br-vm" for j in jobs)
    macs = {json.load(open(os.path.join(node.state, "jobs", str(j), "vm.json")))["nics"][0]["mac"] for j in jobs}
    assert len(macs) == len(jobs)
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda j: node.epilog(j, SPEC), jobs))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    for j in jobs:
        assert node.leftovers(j) == []


def test_requeued_job_gets_a_fresh_start(hook_node):
    node = hook_node
    assert node.prolog(130, SPEC).returncode == 0
    proc = node.prolog(130, SPEC)   # requeue on the same node without an epilog in between
    assert proc.returncode == 0, proc.stderr
    assert "svm130n0" in node.links()
    assert node.epilog(130, SPEC).returncode == 0
    assert node.leftovers(130) == []
