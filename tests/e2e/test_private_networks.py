"""Network isolation through real Slurm, slurm-vm's hooks and QEMU test guests: job-private segments are
never shared (a 2-VNI range, two users, one node or several), unicast VXLAN with no multicast at all,
and addresses handed out cluster-wide on a shared bridge."""

from __future__ import annotations

import json

import pytest

from slurm_vm.networks.allocation import parse_holding

pytestmark = [pytest.mark.cluster, pytest.mark.guest]
OTHER_USER = "svmother"

PAIR = """name: {name}
image: tiny
memory: 256M
networks:
  - network: pair
    address: {address}/24
cloud_init:
  user_data: |
    #cloud-config
    runcmd:
      - sleep 2; if ping -c 4 -W 1 {peer} >/dev/null; then echo "REACH {peer} YES"; else echo "REACH {peer} NO"; fi
"""


def holding(vc, job: int):
    out = vc.cluster.client(["squeue", "-h", "-j", str(job), "-O", "admin_comment:|"]).stdout
    return parse_holding(out.strip().rstrip("|"))


def start(vc, spec: str, *sbatch: str, name: str, user: str = "svmtest") -> tuple[int, str]:
    job = vc.submit(spec, *sbatch, name=name, user=user)
    vc.wait_state(job, {"RUNNING"}, timeout=120)
    node = vc.job_field(job, "%N")
    vc.wait_serial(node, job, "SLURM-VM-TEST ready", timeout=150)
    return job, node


def node_ping(vc, node: str, target: str) -> bool:
    return vc.cluster.node_exec(node, ["ping", "-c", "2", "-W", "2", target], timeout=30).returncode == 0


def stop_all(vc, jobs: list[int]) -> None:
    for job in jobs:
        vc.cluster.client(["scancel", str(job)])
    for job in jobs:
        vc.wait_gone_or_ended(job, timeout=120)
    for job in jobs:
        vc.wait_no_leaks(job)


def _two_private_jobs(vc, node_a: str, node_b: str) -> None:
    a, _ = start(vc, PAIR.format(name="pa", address="192.168.78.10", peer="192.168.78.20"), "-w", node_a, name="pa")
    b, _ = start(vc, PAIR.format(name="pb", address="192.168.78.20", peer="192.168.78.10"), "-w", node_b, name="pb",
                 user=OTHER_USER)
    try:
        vnis = {holding(vc, a).vnis["pair"], holding(vc, b).vnis["pair"]}
        assert vnis == {6000, 6001}
        assert "REACH 192.168.78.20 NO" in vc.wait_serial(node_a, a, "REACH 192.168.78.20", timeout=90)
        assert "REACH 192.168.78.10 NO" in vc.wait_serial(node_b, b, "REACH 192.168.78.10", timeout=90)
        bridge = f"svmbr{holding(vc, a).vnis['pair']}"
        assert vc.cluster.node_exec(node_a, ["ip", "addr", "add", "192.168.78.1/24", "dev", bridge]).returncode == 0
        assert node_ping(vc, node_a, "192.168.78.10")            # A's own segment works ...
        assert not node_ping(vc, node_a, "192.168.78.20")        # ... and does not reach B's VM
        if node_a != node_b:
            third = vc.submit(PAIR.format(name="pc", address="192.168.78.30", peer="192.168.78.10"),
                              "-w", vc.cluster.nodes[2], name="pc")
            assert vc.wait_gone_or_ended(third, timeout=120) == "FAILED"
            assert "all 2 job-private segments of network 'pair' (VNIs 6000-6001) are in use" in vc.output(third)
    finally:
        stop_all(vc, [a, b])


@pytest.mark.both_flavours   # segments are agreed through the jobs' AdminComment
def test_private_segments_of_two_users_on_two_nodes_never_meet(vm_cluster):
    nodes = vm_cluster.cluster.nodes
    _two_private_jobs(vm_cluster, nodes[0], nodes[1])


def test_private_segments_on_one_node_with_colliding_job_ids(vm_cluster):
    """Job ids two apart met on one VNI of a 2-VNI range before VNIs were agreed cluster-wide."""
    vc = vm_cluster
    node = vc.cluster.nodes[0]
    first = vc.submit(PAIR.format(name="pa", address="192.168.78.10", peer="192.168.78.20"), "-w", node, name="pa")
    filler = vc.cluster.client(["sbatch", "--parsable", "--hold", "-o", "/dev/null", "--wrap", "true"], user="svmtest")
    vc.cluster.client(["scancel", filler.stdout.strip()])
    vc.wait_state(first, {"RUNNING"}, timeout=120)
    vc.wait_serial(node, first, "SLURM-VM-TEST ready", timeout=150)
    second, _ = start(vc, PAIR.format(name="pb", address="192.168.78.20", peer="192.168.78.10"), "-w", node,
                      name="pb", user=OTHER_USER)
    assert second - first == 2
    try:
        assert {holding(vc, first).vnis["pair"], holding(vc, second).vnis["pair"]} == {6000, 6001}
        assert "REACH 192.168.78.20 NO" in vc.wait_serial(node, first, "REACH 192.168.78.20", timeout=90)
        bridge = f"svmbr{holding(vc, first).vnis['pair']}"
        assert vc.cluster.node_exec(node, ["ip", "addr", "add", "192.168.78.1/24", "dev", bridge]).returncode == 0
        assert node_ping(vc, node, "192.168.78.10") and not node_ping(vc, node, "192.168.78.20")
    finally:
        stop_all(vc, [first, second])


UNI = """name: uc
image: tiny
count: 3
memory: 256M
networks:
  - network: uni
cloud_init:
  user_data: |
    #cloud-config
    runcmd:
      - for h in uc-0 uc-1 uc-2; do for i in $(seq 60); do ping -c1 -W1 $h >/dev/null && echo "PING $h OK" && break; sleep 1; done; done
"""


def test_unicast_three_vm_job_pings_across_nodes_without_multicast(vm_cluster):
    vc = vm_cluster
    nodes = vc.cluster.nodes
    for node in nodes:   # nothing multicast leaves any node
        assert vc.cluster.node_exec(node, ["ip", "route", "add", "prohibit", "224.0.0.0/4"]).returncode == 0
    job = None
    try:
        job = vc.submit(UNI, name="uc")
        vc.wait_state(job, {"RUNNING"}, timeout=120)
        for node in nodes:
            serial = vc.wait_serial(node, job, "PING uc-2 OK", timeout=180)
            assert all(f"PING uc-{k} OK" in serial for k in range(3)), serial
        vni = holding(vc, job).vnis["uni"]
        for node in nodes:
            fdb = vc.cluster.node_exec(node, ["bridge", "-j", "fdb", "show", "dev", f"svmvx{vni}"]).stdout
            peers = sorted(e["dst"] for e in json.loads(fdb) if e["mac"] == "00:00:00:00:00:00")
            assert peers == sorted(vc.cluster.node_ip(n) for n in nodes if n != node)
            details = vc.cluster.node_exec(node, ["ip", "-d", "-j", "link", "show", f"svmvx{vni}"]).stdout
            data = json.loads(details)[0]["linkinfo"]["info_data"]
            assert data["learning"] is False and "group" not in data
            assert f"svmvx{vni}" in vc.cluster.node_exec(node, ["nft", "list", "tables"]).stdout
        stop_all(vc, [job])
        job = None
        for node in nodes:   # segment, FDB entries and VTEP filter went with the job
            assert f"svmvx{vni}" not in vc.cluster.node_exec(node, ["ip", "-o", "link", "show"]).stdout
            assert f"svmvx{vni}" not in vc.cluster.node_exec(node, ["nft", "list", "tables"]).stdout
    finally:
        if job is not None:
            stop_all(vc, [job])
        for node in nodes:
            vc.cluster.node_exec(node, ["ip", "route", "del", "prohibit", "224.0.0.0/4"])


MANAGED = """name: {name}
image: tiny
memory: 256M
networks:
  - network: managed
{address}"""


@pytest.mark.both_flavours   # addresses are agreed through the jobs' AdminComment
def test_managed_addresses_are_distinct_and_a_taken_static_address_or_mac_is_refused(vm_cluster):
    vc = vm_cluster
    jobs = []
    try:
        for i in range(3):
            jobs.append(start(vc, MANAGED.format(name=f"m{i}", address=""), "-w", vc.cluster.nodes[i],
                              name=f"m{i}"))
        offsets = [holding(vc, job).offsets[("managed", 0)][0] for job, _ in jobs]
        assert len(set(offsets)) == 3 and all(100 <= o <= 199 for o in offsets)
        for (job, node), offset in zip(jobs, offsets):
            assert node_ping(vc, node, f"10.77.0.{offset}"), f"job {job}'s VM does not answer at its address"
        listing = vc.slurm_vm("list", "--json")          # the user sees the handed-out addresses
        assert listing.returncode == 0, listing.stderr
        shown = {r["job_id"]: r["addresses"] for r in json.loads(listing.stdout)}
        assert [shown[job] for job, _ in jobs] == [[f"10.77.0.{o}"] for o in offsets]
        static, mac = "    address: 10.77.0.50/24\n", "    mac: 52:54:00:77:00:50\n"
        jobs.append(start(vc, MANAGED.format(name="s0", address=static + mac), name="s0"))
        mine = vc.submit(MANAGED.format(name="s1", address=static), name="s1")
        theirs = vc.submit(MANAGED.format(name="s2", address=static), name="s2", user=OTHER_USER)
        their_mac = vc.submit(MANAGED.format(name="s3", address=mac), name="s3", user=OTHER_USER)
        for job in (mine, theirs, their_mac):
            assert vc.wait_gone_or_ended(job, timeout=120) == "FAILED"
        assert f"in use by another running VM (your job {jobs[-1][0]})" in vc.output(mine)
        assert "in use by another running VM;" in vc.output(theirs)
        assert str(jobs[-1][0]) not in vc.output(theirs).split("in use by")[1]
        assert "networks[0].mac: 52:54:00:77:00:50 is in use by another running VM " in vc.output(their_mac)
    finally:
        stop_all(vc, [job for job, _ in jobs])
