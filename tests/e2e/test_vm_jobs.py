"""VM jobs through real Slurm daemons, slurm-vm's real hooks and launcher, and QEMU TCG test guests."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.guest]

TINY = """name: {name}
image: {image}
cpus: {cpus}
memory: 256M
disk: 128M
networks:
  - network: lan
    address: 10.77.0.10/24
"""


def tiny(name: str, image: str = "tiny", cpus: int = 1) -> str:
    return TINY.format(name=name, image=image, cpus=cpus)


def node_of(vc, job_id: int) -> str:
    return vc.job_field(job_id, "%N")


def start_tiny(vc, name: str, *sbatch: str, image: str = "tiny", cpus: int = 1) -> tuple[int, str]:
    job = vc.submit(tiny(name, image, cpus), *sbatch, name=name)
    vc.wait_state(job, {"RUNNING"}, timeout=120)
    node = node_of(vc, job)
    vc.wait_serial(node, job, "SLURM-VM-TEST ready", timeout=120)
    return job, node


@pytest.mark.both_flavours   # the stop signal, COMPLETED
def test_vm_runs_with_seed_and_network_then_stops_gracefully(vm_cluster):
    vc = vm_cluster
    job, node = start_tiny(vc, "alpha")
    serial = vc.serial_log(node, job)
    assert "SLURM-VM-TEST instance-id=slurm-vm-" in serial and f"-{job}-" in serial
    assert "SLURM-VM-TEST hostname=alpha" in serial
    ping = vc.cluster.node_exec(node, ["ping", "-c", "2", "-W", "3", "10.77.0.10"], timeout=30)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    listing = vc.slurm_vm("list", "--json")
    assert listing.returncode == 0, listing.stderr
    names = {r["name"]: r for r in json.loads(listing.stdout)}
    assert names["alpha"]["job_id"] == job and names["alpha"]["state"] == "RUNNING"
    assert names["alpha"]["addresses"] == ["10.77.0.10"]

    status = vc.slurm_vm("status", "alpha", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["state"] == "RUNNING" and data["nodes"] == [node]
    assert any("SLURM-VM-TEST ready" in line for line in data["serial_tail"]), data
    console = vc.slurm_vm("console", str(job), "--log", "--lines", "50")
    assert console.returncode == 0 and "SLURM-VM-TEST hostname=alpha" in console.stdout, console.stderr

    stop = vc.slurm_vm("stop", "alpha")
    assert stop.returncode == 0, stop.stderr
    assert vc.wait_gone_or_ended(job) == "COMPLETED", vc.output(job)
    assert "SLURM-VM-TEST acpi-shutdown" in vc.output(job)
    vc.wait_no_leaks(job)


@pytest.mark.both_flavours   # scancel, KillWait, CANCELLED
def test_scancel_shuts_the_guest_down_within_killwait(vm_cluster):
    vc = vm_cluster
    job, node = start_tiny(vc, "bravo")
    started = time.monotonic()
    vc.cluster.client(["scancel", str(job)], user="svmtest")
    assert vc.wait_gone_or_ended(job, timeout=60) == "CANCELLED"
    assert time.monotonic() - started < 60
    out = vc.output(job)
    assert "SLURM-VM-TEST acpi-shutdown" in out, out
    vc.wait_no_leaks(job)


def test_guest_ignoring_acpi_is_hard_stopped_after_grace(vm_cluster):
    vc = vm_cluster
    job, node = start_tiny(vc, "charlie", image="tiny-noacpi")
    vc.slurm_vm("stop", str(job))
    state = vc.wait_gone_or_ended(job, timeout=90)
    assert state in {"FAILED", "COMPLETED"}
    assert "hard" in vc.output(job).lower(), vc.output(job)
    vc.wait_no_leaks(job)


# The time limit (power button before the limit, then TIMEOUT): tests/e2e/test_accounting.py, with sacct.


def test_launcher_killed_leaves_nothing(vm_cluster):
    vc = vm_cluster
    job, node = start_tiny(vc, "echo")
    pid_file = os.path.join(vc.node_state(node), "jobs", str(job), "launcher.pid")
    with open(pid_file) as fh:
        os.kill(int(fh.read().split()[0]), signal.SIGKILL)
    vc.wait_gone_or_ended(job, timeout=90)
    vc.wait_no_leaks(job)


@pytest.mark.both_flavours   # FAILED, the epilog after a crash
def test_hypervisor_crash_ends_job_and_leaves_nothing(vm_cluster):
    vc = vm_cluster
    job, node = start_tiny(vc, "foxtrot")
    pid_file = os.path.join(vc.node_state(node), "jobs", str(job), "vmm.pid")
    with open(pid_file) as fh:
        os.kill(int(fh.read().split()[0]), signal.SIGKILL)
    assert vc.wait_gone_or_ended(job, timeout=90) == "FAILED"
    assert "crash" in vc.output(job).lower() or "unexpected" in vc.output(job).lower(), vc.output(job)
    vc.wait_no_leaks(job)


@pytest.mark.both_flavours   # a refusing prolog must not drain the node
def test_refused_spec_fails_the_job_with_the_reason(vm_cluster):
    """A volume the user cannot read is refused on the node: the job fails with a clear line, nothing stays."""
    vc = vm_cluster
    secret = os.path.join(vc.directory, "root-only.img")
    with open(secret, "wb") as fh:
        fh.truncate(1 << 20)
    os.chmod(secret, 0o600)
    spec = tiny("golf") + f"volumes:\n  - path: {secret}\n"
    job = vc.submit(spec, name="golf")
    assert vc.wait_gone_or_ended(job, timeout=90) == "FAILED"
    out = vc.output(job)
    assert "refused" in out and secret in out, out
    vc.wait_no_leaks(job)
    drained = vc.cluster.client(["sinfo", "-h", "-t", "drain", "-o", "%N"]).stdout.strip()
    assert drained == ""


@pytest.mark.both_flavours   # the task cgroup's cpuset
def test_vcpus_are_pinned_to_the_allocated_cores(vm_cluster):
    vc = vm_cluster
    job, node = start_tiny(vc, "hotel", cpus=2)
    pid_file = os.path.join(vc.node_state(node), "jobs", str(job), "vmm.pid")
    with open(pid_file) as fh:
        pid = int(fh.read().split()[0])
    allowed = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as fh:
            comm = fh.read().strip()
        if comm.startswith("CPU "):
            with open(f"/proc/{pid}/task/{tid}/status") as fh:
                line = next(l for l in fh if l.startswith("Cpus_allowed_list:"))
            allowed.add(line.split(":")[1].strip())
    assert allowed == {"0", "1"}, allowed
    vc.slurm_vm("stop", str(job))
    vc.wait_gone_or_ended(job)
    vc.wait_no_leaks(job)


def test_node_doctor_finds_and_fixes_leftovers(vm_cluster):
    vc = vm_cluster
    node = vc.cluster.nodes[0]
    state = vc.node_state(node)
    os.makedirs(os.path.join(state, "jobs", "999999"), exist_ok=True)
    os.makedirs(os.path.join(state, "locks", "volumes"), exist_ok=True)
    with open(os.path.join(state, "locks", "vxlan-5999.json"), "w") as fh:
        json.dump({"jobs": [999999], "private": True}, fh)
    with open(os.path.join(state, "locks", "volumes", "1-2"), "w") as fh:
        fh.write("999999 /data/v.img\n")
    os.makedirs(os.path.join(state, "nics", "999999"), exist_ok=True)
    assert vc.cluster.node_exec(node, ["nft", "add", "table", "netdev", "svm_999999"]).returncode == 0
    # a unicast segment no job holds (its record lost): device, FDB entry to a peer, VTEP filter table
    for cmd in (["ip", "link", "add", "svmvx5998", "type", "vxlan", "id", "5998", "dev", "eth0", "dstport", "4789",
                 "nolearning"],
                ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "svmvx5998", "dst", "10.9.9.9"],
                ["nft", "add", "table", "inet", "svmvx5998"]):
        assert vc.cluster.node_exec(node, cmd).returncode == 0, cmd
    argv = [os.path.join(os.path.dirname(os.path.dirname(__import__("sys").executable)), "bin", "slurm-vm"),
            "node", "doctor", "--node", node, "--json"]
    env = ["env", f"SLURM_VM_CONFIG={vc.config_path}", *[f"{k}={v}" for k, v in vc.cluster.env.items()]]
    found = vc.cluster.node_exec(node, [*env, *argv], timeout=60)
    assert found.returncode == 1, found.stderr
    kinds = {f["kind"] for f in json.loads(found.stdout) if f["job_id"] == 999999}
    assert kinds == {"job dir", "volume reservation", "VXLAN segment reference", "port filter table",
                     "macvtap device nodes"}, found.stdout
    orphans = [f["name"] for f in json.loads(found.stdout) if f["kind"] == "VXLAN segment without a job"]
    assert orphans == ["vni 5998 (FDB to 10.9.9.9)"], found.stdout
    fixed = vc.cluster.node_exec(node, [*env, *argv, "--fix"], timeout=60)
    assert fixed.returncode == 0, fixed.stderr
    assert not os.path.exists(os.path.join(state, "jobs", "999999"))
    assert not os.path.exists(os.path.join(state, "locks", "vxlan-5999.json"))
    assert not os.path.exists(os.path.join(state, "locks", "volumes", "1-2"))
    assert not os.path.exists(os.path.join(state, "nics", "999999"))
    assert "svm_999999" not in vc.cluster.node_exec(node, ["nft", "list", "tables"]).stdout
    assert "svmvx5998" not in vc.cluster.node_exec(node, ["ip", "-o", "link", "show"]).stdout
    assert "svmvx5998" not in vc.cluster.node_exec(node, ["nft", "list", "tables"]).stdout


MULTI = """name: vc
image: tiny
count: 3
memory: 256M
networks:
  - network: private
cloud_init:
  user_data: |
    #cloud-config
    runcmd:
      - for h in vc-0 vc-1 vc-2; do for i in $(seq 60); do ping -c1 -W1 $h >/dev/null && echo "PING $h OK" && break; sleep 1; done; done
"""


@pytest.mark.both_flavours   # one srun step over 3 nodes
def test_three_vm_job_guests_ping_each_other_by_hostname_across_nodes(vm_cluster):
    vc = vm_cluster
    job = vc.submit(MULTI, name="vc")
    vc.wait_state(job, {"RUNNING"}, timeout=120)
    nodes = vc.job_field(job, "%N")
    expanded = vc.cluster.client(["scontrol", "show", "hostnames", nodes]).stdout.split()
    assert len(expanded) == 3
    for i, node in enumerate(expanded):
        serial = vc.wait_serial(node, job, "PING vc-2 OK", timeout=180)
        assert f"SLURM-VM-TEST hostname=vc-{i}" in serial
        for peer in ("vc-0", "vc-1", "vc-2"):
            assert f"PING {peer} OK" in serial, serial
    stop = vc.slurm_vm("stop", "vc")
    assert stop.returncode == 0, stop.stderr
    assert vc.wait_gone_or_ended(job, timeout=120) == "COMPLETED", vc.output(job)
    vc.wait_no_leaks(job)
    for node in vc.cluster.nodes:
        links = vc.cluster.node_exec(node, ["ip", "-o", "link", "show"]).stdout
        assert "svmvx" not in links and "svmbr" not in links, links
