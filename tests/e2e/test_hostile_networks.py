"""Hostile tenants on the networks, through real Slurm and slurm-vm's hooks (issue 20, points 1-3).

svmother, with ordinary jobs (`srun -w NODE python3 ...`), attacks svmtest's VXLAN segments: binds the VXLAN
port to sniff (on a node without a segment), and sends VXLAN frames of svmtest's VNI from another node and
from the node the segment runs on (multicast), and from one of the job's own nodes (unicast, whose VTEP
filter admits it). A root witness on the segment's bridge records what arrives. Then VMs that claim the
router's address, a node NIC's MAC, or another running VM's static address on a network without `subnet`
are refused as the user's fault: the job ends FAILED with one line, and no node is drained.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from devtools.vmcluster import venv_dir
from tests.e2e.test_private_networks import holding, stop_all

pytestmark = [pytest.mark.cluster, pytest.mark.both_flavours]
OTHER_USER = "svmother"
EADDRINUSE, EPERM = 98, 1

ATTACK = r"""
import json, socket, struct, sys
args = json.loads(sys.argv[1])
out = {}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.bind(("0.0.0.0", args["port"]))
    out["bind"] = "ok"
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(args["group"]) + socket.inet_aton(args["local"]))
    out["joined"] = "ok"
except OSError as exc:
    out.setdefault("bind", exc.errno)
if args.get("to"):
    frame = bytes.fromhex("ffffffffffff" + "520000000e01" + "88b5") + b"SVMINJECT" * 4
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
            struct.pack("!II", 0x08000000, args["vni"] << 8) + frame, (args["to"], args["port"]))
        out["sent"] = "ok"
    except OSError as exc:
        out["sent"] = exc.errno
print("ATTACK " + json.dumps(out))
"""

WITNESS = r"""
import select, socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0))
deadline = time.monotonic() + float(sys.argv[2])
seen = False
while time.monotonic() < deadline and not seen:
    if select.select([s], [], [], 0.2)[0] and b"SVMINJECT" in s.recv(65535):
        seen = True
print("SEEN" if seen else "NOTHING")
"""


def attack(vc, node: str, **args) -> dict:
    args.setdefault("port", 4789)
    args.setdefault("group", "239.0.0.1")
    args.setdefault("local", vc.cluster.node_ip(node))
    proc = vc.cluster.client(["srun", "-w", node, "-N1", "-n1", "--mem=64M", "-t", "2", "python3", "-c", ATTACK,
                              json.dumps(args)], user=OTHER_USER, timeout=90)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ATTACK ")]
    assert lines, (proc.stdout, proc.stderr)
    return json.loads(lines[0][len("ATTACK "):])


def injected(vc, witness_node: str, vni: int, attacker: str, to: str) -> tuple[dict, bool]:
    """svmother on `attacker` sends a frame of segment `vni` to `to`; did `witness_node`'s segment bridge see it?"""
    with ThreadPoolExecutor(1) as pool:
        watch = pool.submit(vc.cluster.node_exec, witness_node, ["python3", "-c", WITNESS, f"svmbr{vni}", "25"],
                            timeout=60)
        result = attack(vc, attacker, vni=vni, to=to)
        return result, watch.result().stdout.strip() == "SEEN"


def running(vc, spec: str, *sbatch: str, name: str, user: str = "svmtest") -> int:
    job = vc.submit(spec, *sbatch, name=name, user=user)
    vc.wait_state(job, {"RUNNING"}, timeout=120)
    return job


def prepared(vc, job: int, network: str, nodes: tuple[str, ...]) -> int:
    """The job's VNI once its prologs made the segment on `nodes` (RUNNING comes before the prolog ends)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        record = holding(vc, job)
        if record is not None and record.state == "k" and all(
                vc.cluster.node_exec(n, ["ip", "link", "show", f"svmbr{record.vnis[network]}"]).returncode == 0
                for n in nodes):
            return record.vnis[network]
        time.sleep(1)
    raise AssertionError(f"job {job}'s segment on {nodes} not made: {vc.output(job)}")


def no_drained_nodes(vc) -> None:
    reasons = vc.cluster.client(["sinfo", "-R", "-h"]).stdout.strip()
    assert reasons == "", reasons


PRIVATE = """name: seg
image: tiny
memory: 256M
count: {count}
networks:
  - network: {network}
"""


def test_segment_sniffing_and_injection_fail_from_another_node_and_from_a_shared_node(vm_cluster):
    """Multicast `private` on n1: svmother binds the VXLAN port on n3 (no segment there yet) and sends frames of
    the VNI from n3 and from n1 itself. Unicast `uni` on n2+n3: svmother sends from n2, one of the job's nodes.
    Each node keeps a free core for svmother's job."""
    vc = vm_cluster
    n1, n2, n3 = vc.cluster.nodes
    jobs = []
    try:
        jobs.append(running(vc, PRIVATE.format(count=1, network="private"), "-w", n1, name="seg"))
        vni = prepared(vc, jobs[0], "private", (n1,))
        group = f"239.{(vni >> 16) & 255}.{(vni >> 8) & 255}.{vni & 255}"
        sniff = attack(vc, n3, group=group)
        assert sniff["bind"] == EADDRINUSE, sniff                      # the guard holds the port on n3
        jobs.append(running(vc, PRIVATE.format(count=2, network="uni"), "-N2", "-w", f"{n2},{n3}", name="uc"))
        uni = prepared(vc, jobs[1], "uni", (n2, n3))
        for attacker, to, witness, seg in ((n3, vc.cluster.node_ip(n1), n1, vni),      # another node
                                           (n1, "127.0.0.1", n1, vni),                 # the segment's own node
                                           (n2, vc.cluster.node_ip(n3), n3, uni)):     # a unicast job node
            result, seen = injected(vc, witness, seg, attacker, to)
            assert result["sent"] == EPERM and not seen, (attacker, to, result, seen)
        for node in (n1, n3):   # node doctor finds the underlay in place
            doctor = vc.cluster.node_exec(node, ["env", f"SLURM_VM_CONFIG={vc.config_path}",
                                                 *[f"{k}={v}" for k, v in vc.cluster.env.items()],
                                                 os.path.join(venv_dir(), "bin", "slurm-vm"), "node", "doctor",
                                                 "--node", node, "--json"], timeout=60)
            assert not [f for f in json.loads(doctor.stdout) if f["kind"] == "underlay"], doctor.stdout
    finally:
        vc.cluster.client(["scancel", "-u", OTHER_USER])
        stop_all(vc, jobs)
    no_drained_nodes(vc)


MANAGED = """name: {name}
image: tiny
memory: 256M
networks:
  - network: {network}
{extra}"""


def refused(vc, job: int) -> str:
    assert vc.wait_gone_or_ended(job, timeout=120) == "FAILED"
    lines = [line for line in vc.output(job).splitlines() if "the node refused this VM" in line]
    assert len(lines) == 1, vc.output(job)
    return lines[0]


def test_router_address_node_mac_and_a_held_address_are_refused_as_the_users_fault(vm_cluster):
    vc = vm_cluster
    n1 = vc.cluster.nodes[0]
    eth0 = json.loads(vc.cluster.node_exec(n1, ["ip", "-j", "link", "show", "eth0"]).stdout)[0]["address"]
    jobs = []
    try:
        router = vc.submit(MANAGED.format(name="r", network="managed", extra="    address: 10.77.0.1/24\n"),
                           name="r", user=OTHER_USER)
        node_mac = vc.submit(MANAGED.format(name="m", network="direct", extra=f"    mac: '{eth0}'\n"), "-w", n1,
                             name="m", user=OTHER_USER)
        assert "networks[0].address: 10.77.0.1 is an address of the node itself" in refused(vc, router)
        assert f"networks[0].mac: {eth0} is the MAC of this node's interface eth0" in refused(vc, node_mac)
        jobs.append(running(vc, MANAGED.format(name="first", network="lan", extra="    address: 10.77.0.60/24\n"),
                            name="first"))
        second = vc.submit(MANAGED.format(name="second", network="lan", extra="    address: 10.77.0.60/24\n"),
                           name="second", user=OTHER_USER)
        assert "networks[0].address: 10.77.0.60 is in use by another running VM;" in refused(vc, second)
        same_wire = vc.submit(MANAGED.format(name="third", network="managed", extra="    address: 10.77.0.60/24\n"),
                              name="third", user=OTHER_USER)
        assert "10.77.0.60 is in use by another running VM" in refused(vc, same_wire)   # `managed` shares vmbr0
    finally:
        stop_all(vc, jobs)
    no_drained_nodes(vc)
