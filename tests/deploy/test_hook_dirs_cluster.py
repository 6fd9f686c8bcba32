"""Through real Slurm: slurm-vm's hook in a site's prolog.d/epilog.d under another name, next to the site's own
hook, and then with its venv removed (after a "reboot": no state-dir hint). Plain jobs run; no node drains.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import yaml

from devtools.testcluster import Cluster
from devtools.vmcluster import REPO, TEST_ROOT, venv_dir
from slurm_vm.node.configcache import CACHE_ROOT, STATE_DIR_SUFFIX
from tests.fixtures.cluster import cluster_name, flavour

pytestmark = [pytest.mark.cluster, pytest.mark.both_flavours]


@pytest.fixture(scope="module")
def dirs_cluster(cluster_factory):
    name = cluster_name("hookd" + flavour().replace(".", ""))
    directory = os.path.join(TEST_ROOT, name)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    os.chmod(TEST_ROOT, 0o755)
    os.chmod(directory, 0o755)
    config = os.path.join(directory, "config.yaml")
    with open(config, "w") as fh:
        yaml.safe_dump({"state_dir": os.path.join(directory, "state-%n"), "images": {}, "networks": {}}, fh)
    os.chmod(config, 0o644)
    cluster = cluster_factory(name, hooks="dirs", venv=venv_dir(), slurm_vm_config=config, bind=[REPO, TEST_ROOT])
    yield cluster, config, directory
    shutil.rmtree(directory, ignore_errors=True)


def install_hook(cluster: Cluster, config: str, venv: str) -> None:
    hook = cluster.path("hooks", "slurm-vm-hook")
    proc = subprocess.run([os.path.join(venv_dir(), "bin", "slurm-vm"), "node", "install-hook", hook,
                           "--config", config, "--venv", venv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for which in ("prolog", "epilog"):
        link = cluster.path("hooks", f"{which}.d", "50-slurm-vm")
        if not os.path.lexists(link):
            os.symlink(hook, link)


def hint_on(cluster: Cluster, node: str, config: str) -> subprocess.CompletedProcess:
    return cluster.node_exec(node, ["cat", CACHE_ROOT + config + STATE_DIR_SUFFIX], timeout=20)


def forget_hints(cluster: Cluster, config: str) -> None:
    """As after a reboot (the hint lives on tmpfs)."""
    for node in cluster.nodes:
        cluster.node_exec(node, ["rm", "-f", CACHE_ROOT + config + STATE_DIR_SUFFIX], timeout=20)


def run_plain_jobs(cluster: Cluster) -> list[str]:
    """An srun over every node and a batch job on each; returns their job ids."""
    proc = cluster.client(["srun", "-N3", "sh", "-c", "echo $SLURM_JOB_ID"], user="svmtest", timeout=120)
    assert proc.returncode == 0, proc.stderr
    ids = sorted(set(proc.stdout.split()))
    assert len(ids) == 1
    for node in cluster.nodes:
        proc = cluster.client(["sbatch", "--parsable", "-w", node, "-o", "/dev/null", "--wrap", "true"],
                              user="svmtest", timeout=60)
        assert proc.returncode == 0, proc.stderr
        ids.append(proc.stdout.strip().split(";")[0])
    for job in ids:
        assert cluster.wait_job(int(job), {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=180) == "COMPLETED"
    return ids


def assert_in_service(cluster: Cluster) -> None:
    proc = cluster.client(["sinfo", "-R", "-h"], timeout=20)
    assert proc.returncode == 0 and proc.stdout.strip() == "", f"drained: {proc.stdout}"
    states = cluster.client(["sinfo", "-h", "-N", "-o", "%T"], timeout=20).stdout.split()
    assert states and all(state in ("idle", "mixed", "allocated", "completing") for state in states), states


def site_hook_ran(cluster: Cluster, job: str) -> bool:
    records = os.listdir(cluster.path("hook-records"))
    return any(name.startswith(f"prolog.{job}.") for name in records) and \
        any(name.startswith(f"epilog.{job}.") for name in records)


def test_prolog_d_link_under_another_name_then_venv_removed(dirs_cluster):
    cluster, config, directory = dirs_cluster
    install_hook(cluster, config, venv_dir())
    forget_hints(cluster, config)
    jobs = run_plain_jobs(cluster)
    assert all(site_hook_ran(cluster, job) for job in jobs)
    for node in cluster.nodes:   # slurm-vm's Python ran there (no hint yet) and wrote it
        proc = hint_on(cluster, node, config)
        assert proc.returncode == 0 and proc.stdout.strip() == os.path.join(directory, "state-%n"), proc.stderr
    assert_in_service(cluster)

    removed = os.path.join(directory, "venv-removed")
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", removed], check=True, timeout=120)
    install_hook(cluster, config, removed)
    shutil.rmtree(removed)
    forget_hints(cluster, config)
    jobs = run_plain_jobs(cluster)
    assert all(site_hook_ran(cluster, job) for job in jobs)
    assert all(hint_on(cluster, node, config).returncode != 0 for node in cluster.nodes)   # no Python ran
    assert_in_service(cluster)


def node_state(cluster: Cluster, node: str) -> str:
    return cluster.client(["sinfo", "-h", "-n", node, "-o", "%t"], timeout=20).stdout.strip()


def as_slurmd(cluster: Cluster, node: str, argv: list[str]) -> subprocess.CompletedProcess:
    """In the node's slurmd namespaces (its /dev/net/tun is the node's 0666 one), as HealthCheckProgram runs."""
    if cluster.rootfs:
        return cluster.node_exec(node, argv, timeout=120)
    pid = cluster._read_pid(f"{node}.mntpid")
    return subprocess.run(["nsenter", f"--target={pid}", "--mount", "--net", *argv], capture_output=True, text=True,
                          timeout=120)


def test_health_check_drains_a_node_without_the_bridge_then_resumes_it(dirs_cluster):
    """`slurm-vm node check --drain` as HealthCheckProgram runs it: on the node, as root, through real Slurm."""
    cluster, _, directory = dirs_cluster
    config = os.path.join(directory, "check.yaml")
    with open(config, "w") as fh:
        yaml.safe_dump({"state_dir": os.path.join(directory, "state-%n"), "images": {},
                        "networks": {"lan": {"kind": "bridge", "bridge": "br-hc", "subnet": "10.9.0.0/24"}}}, fh)
    os.chmod(config, 0o644)
    node = cluster.nodes[0]
    check = ["env", f"SLURM_CONF={cluster.conf}", os.path.join(venv_dir(), "bin", "slurm-vm"), "node", "check",
             "--drain", "--quiet", "--node", node, "--config", config]
    proc = as_slurmd(cluster, node, check)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stdout
    assert lines[0].startswith("FAIL link br-hc: no such interface (needed by network lan); fix: create bridge br-hc")
    reasons = cluster.client(["sinfo", "-R", "-h", "-N", "-o", "%N|%E"], timeout=20).stdout.strip().splitlines()
    assert reasons == [f"{node}|slurm-vm node check: link br-hc: no such interface"], reasons
    try:
        for argv in (["ip", "link", "add", "br-hc", "type", "bridge"], ["ip", "link", "set", "br-hc", "up"]):
            assert cluster.node_exec(node, argv, timeout=20).returncode == 0
        proc = as_slurmd(cluster, node, check)
        assert (proc.returncode, proc.stdout) == (0, ""), proc.stdout + proc.stderr
        assert cluster.client(["sinfo", "-R", "-h"], timeout=20).stdout.strip() == ""   # resumed
        deadline = time.monotonic() + 60   # slurmctld pings the resumed node before it shows plain idle
        while time.monotonic() < deadline and node_state(cluster, node) != "idle":
            time.sleep(0.5)
        assert_in_service(cluster)
    finally:
        cluster.node_exec(node, ["ip", "link", "del", "br-hc"], timeout=20)
        cluster.client(["scontrol", "update", f"NodeName={node}", "State=RESUME"], timeout=20)
