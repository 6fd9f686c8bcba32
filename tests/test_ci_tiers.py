"""The CI's parallel pieces must not meet: cluster names per xdist worker, and the subnet guard of the test
cluster (two clusters on one subnet would break each other's routing without an error)."""

from __future__ import annotations

import glob
import itertools
import os
import re
import subprocess

import pytest

from devtools.testcluster import Cluster, ClusterError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = ["", "gw0", "gw1", "gw2", "gw3"]


def fixture_bases() -> set[str]:
    """The base names the tests give cluster_name() (a flavour is appended to all but literal ones)."""
    bases = {"pytest", "leak", "hookd", "noacct"}   # hookd: tests/deploy/test_hook_dirs_cluster.py
    for path in glob.glob(os.path.join(REPO, "tests", "**", "*.py"), recursive=True):
        with open(path) as fh:
            bases |= set(re.findall(r'_vm_cluster\(cluster_factory, "(\w+)"', fh.read()))
    return bases


@pytest.mark.parametrize("prefix", ["", "ci"])
def test_the_ci_cluster_names_have_distinct_subnets_bridges_and_ports(prefix, monkeypatch):
    from tests.fixtures.cluster import cluster_name
    bases = fixture_bases()
    assert {"e2e", "ckpt", "vfs"} <= bases
    names = [prefix + "demo"]
    monkeypatch.setenv("SLURM_VM_TEST_PREFIX", prefix)
    for base, flavour, worker in itertools.product(sorted(bases), ["2205", "2411"], WORKERS):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        names.append(cluster_name(base + flavour))
    assert len(set(names)) == len(names)
    clusters = [Cluster(name) for name in names]
    for key in ("subnet", "bridge", "ctl_port", "db_port"):   # dbd_port is db_port + 1 (db_port is even)
        values = [getattr(c, key) for c in clusters]
        clashes = {v for v in values if values.count(v) > 1}
        assert not clashes, (key, [c.name for c in clusters if getattr(c, key) in clashes])


@pytest.mark.root
def test_a_cluster_whose_subnet_is_taken_refuses_to_start_and_makes_nothing():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = os.environ.get("SLURM_VM_TEST_PREFIX", "") + "clash"
    cluster = Cluster(name)
    link = f"tcx{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", link, "type", "bridge"], check=True, timeout=20)
    try:
        subprocess.run(["ip", "addr", "add", f"{cluster.subnet}.1/24", "dev", link], check=True, timeout=20)
        with pytest.raises(ClusterError, match=rf"subnet {re.escape(cluster.subnet)}\.0/24 .* in use by {link}"):
            cluster.up()
        assert not os.path.exists(cluster.path("etc")) and not cluster.leaks()
    finally:
        subprocess.run(["ip", "link", "del", link], timeout=20)
        cluster.down()


@pytest.mark.root
def test_the_trixie_rootfs_is_prepared_under_a_lock():
    """Two 24.11 workers must not debootstrap or pip-install into the shared rootfs at the same time."""
    import fcntl
    import threading

    from devtools.testcluster import ROOTFS_CACHE, ensure_rootfs, rootfs_path
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not os.path.exists(os.path.join(rootfs_path(), ".complete")):
        pytest.skip("the trixie rootfs is not built (the first 24.11 cluster builds it)")
    with open(os.path.join(ROOTFS_CACHE, ".rootfs.lock"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        worker = threading.Thread(target=ensure_rootfs, args=(None, []), daemon=True)
        worker.start()
        worker.join(1.0)
        assert worker.is_alive(), "ensure_rootfs did not wait for the lock"
    worker.join(30)
    assert not worker.is_alive()
