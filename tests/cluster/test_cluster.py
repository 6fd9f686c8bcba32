"""The namespace Slurm test cluster itself: nodes, cgroup confinement, hooks, and a clean `down`."""

from __future__ import annotations

import os
import time

import pytest

from devtools.testcluster import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.both_flavours]   # the flavour's cluster itself: hooks, cgroups


def run_ok(cluster, argv, user="svmtest", timeout=120):
    proc = cluster.client(argv, user=user, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_three_nodes_with_distinct_hostnames(slurm_cluster):
    out = run_ok(slurm_cluster, ["srun", "-N3", "hostname"])
    assert sorted(out.split()) == sorted(slurm_cluster.nodes)


def test_step_affinity_matches_its_cpuset_cgroup(slurm_cluster):
    script = ("a=$(awk '/Cpus_allowed_list/ {print $2}' /proc/self/status); "
              "p=$(awk -F: '$2 ~ /cpuset/ {print $3}' /proc/self/cgroup); "
              "c=$(cat /sys/fs/cgroup/cpuset$p/cpuset.cpus); echo \"$a $c\"")
    out = run_ok(slurm_cluster, ["srun", "-N1", "-c2", "sh", "-c", script]).split()
    assert out[0] == out[1] and out[0] in ("0-1", "0,1")
    one = run_ok(slurm_cluster, ["srun", "-N1", "-c1", "sh", "-c", script]).split()
    assert one[0] == one[1] and one[0] in ("0", "1")


def test_job_over_its_memory_is_killed(slurm_cluster):
    proc = slurm_cluster.client(["srun", "-N1", "--mem=50M", "python3", "-c",
                                 "b = bytearray(300 * 1024 * 1024); import time; time.sleep(2)"],
                                user="svmtest", timeout=120)
    assert proc.returncode != 0
    assert "oom" in (proc.stderr + proc.stdout).lower() or "memory" in (proc.stderr + proc.stdout).lower()


def test_prolog_and_epilog_run_as_root_on_every_node(slurm_cluster):
    job = int(run_ok(slurm_cluster, ["sbatch", "--parsable", "-N3", "-o", "/dev/null", "--wrap", "true"]).strip())
    slurm_cluster.wait_job(job, {"COMPLETED"}, timeout=120)
    records = slurm_cluster.path("hook-records")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        names = set(os.listdir(records))
        if all(f"{w}.{job}.{n}" in names for w in ("prolog", "epilog") for n in slurm_cluster.nodes):
            break
        time.sleep(0.3)
    for which in ("prolog", "epilog"):
        for node in slurm_cluster.nodes:
            with open(os.path.join(records, f"{which}.{job}.{node}")) as fh:
                env = dict(line.rstrip("\n").split("=", 1) for line in fh if "=" in line)
            assert env["HOOK_UID"] == "0"
            assert env["SLURM_JOB_ID"] == str(job)
            assert env["SLURM_JOB_UID"] == "4201"
            assert env["SLURMD_NODENAME"] == node


def test_down_leaves_nothing_and_is_idempotent(cluster_factory):
    from tests.fixtures.cluster import cluster_name, flavour
    cluster = cluster_factory(cluster_name("leak" + flavour().replace(".", "")), hooks="none", nodes_count=2,
                              accounting=True)
    run_ok(cluster, ["srun", "-N2", "true"])
    job = int(run_ok(cluster, ["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "sleep 300"]).strip())
    cluster.wait_job(job, {"RUNNING"})
    deadline = time.monotonic() + 30     # slurmctld tells slurmdbd shortly after the start
    while run_ok(cluster, ["sacct", "-X", "-n", "-P", "-j", str(job), "-o", "State"]).strip() != "RUNNING":
        assert time.monotonic() < deadline, "the running job is not in sacct"
        time.sleep(0.5)
    assert cluster.leaks() != [] and "mariadbd" in open(f"/proc/{cluster._read_pid('mariadb.pid')}/cmdline").read()
    cluster.down()
    assert cluster.leaks() == []
    cluster.down()
    assert cluster.leaks() == []
    again = Cluster(cluster.name, slurm=cluster.slurm, nodes_count=2, hooks="none")
    again.up()
    again.up()   # idempotent
    run_ok(again, ["srun", "-N2", "true"])
    again.down()
    assert again.leaks() == []
