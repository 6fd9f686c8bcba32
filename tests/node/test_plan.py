"""The prolog's functional core: spec + config + job context -> NodePlan, without root or side effects."""

from __future__ import annotations

import pytest
import yaml

from slurm_vm.config import parse_config
from slurm_vm.disks.volumes import VolumeInfo
from slurm_vm.hypervisor.definition import Boot, Nic, VMDefinition
from slurm_vm.node.context import JobContext
from slurm_vm.errors import NodeError
from slurm_vm.networks.allocation import Holding
from slurm_vm.node.plan import make_plan
from slurm_vm.node.prepare import resolved_definition
from slurm_vm.spec import parse_spec

CONFIG = """
state_dir: /var/lib/svm/%n
images:
  deb: {path: /img/deb.qcow2, kernel: /img/vmlinux, initrd: /img/initrd, cmdline: "console=ttyS0"}
  fw: {path: /img/fw.raw, format: raw, firmware: /img/CLOUDHV.fd}
networks:
  lan: {kind: bridge, bridge: br0}
  fabric: {kind: macvtap, parent: eth1}
  private: {kind: vxlan, parent: eth0, vni_range: [1000, 1999], subnet: 192.168.50.0/24}
  uni: {kind: vxlan, parent: eth0, vni_range: [1000, 1999], vxlan_mode: unicast, subnet: 192.168.51.0/24,
        subnet6: "fd00:51::/64"}
  shared: {kind: bridge, bridge: br2, subnet: 10.3.0.0/24, subnet6: "fd00:3::/64",
           address_range: [10.3.0.100, 10.3.0.199]}
grace_seconds: 7
"""


def ctx(job_id: int = 77, node: str = "n1", nodes: tuple[str, ...] = ("n1",)) -> JobContext:
    return JobContext(job_id=job_id, uid=4201, gid=4201, user="svmtest", node=node, nodes=nodes, cluster="c",
                      comment="")


def plan_for(spec_text: str, context: JobContext | None = None, holding: Holding | None = None,
             underlays: dict | None = None):
    config = parse_config(CONFIG, "config")
    return make_plan(parse_spec(spec_text, "spec", config), config, context or ctx(), holding, underlays)


def test_single_vm_plan():
    plan = plan_for("""name: web
image: deb
cpus: 2
memory: 1G
disk: 10G
networks: [{network: lan, address: 10.0.0.5/24, gateway: 10.0.0.1}, {network: fabric}]
volumes: [{path: /data/v.img, readonly: true}]
""")
    assert plan.job_dir == "/var/lib/svm/n1/jobs/77"
    assert plan.base_image == "/img/deb.qcow2" and plan.disk_size == 10 << 30
    assert [n.ifname for n in plan.nics] == ["svm77n0", "svm77n1"]
    assert plan.nics[0].bridge == "br0" and plan.nics[1].parent == "eth1"
    assert plan.nics[1].device_path == "/var/lib/svm/n1/nics/77/macvtap1"   # root's dir, not the job dir
    assert len({n.mac for n in plan.nics}) == 2
    for nic in plan.nics:
        first = int(nic.mac.split(":")[0], 16)
        assert first & 0b11 == 0b10
    net = yaml.safe_load(plan.seed.network_config)
    assert net["version"] == 2
    eth0 = net["ethernets"]["eth0"]
    assert eth0["addresses"] == ["10.0.0.5/24"] and eth0["match"]["macaddress"] == plan.nics[0].mac
    assert eth0["routes"] == [{"to": "0.0.0.0/0", "via": "10.0.0.1"}]
    assert net["ethernets"]["eth1"]["dhcp4"] is True
    meta = yaml.safe_load(plan.seed.meta_data)
    assert meta["local-hostname"] == "web" and "77" in meta["instance-id"]
    d = plan.definition
    assert (d.cpus, d.memory_bytes, d.grace_seconds) == (2, 1 << 30, 7)
    assert [disk.role for disk in d.disks] == ["root", "seed", "volume"]
    assert d.disks[2].readonly is True and d.disks[2].format == "auto"
    assert d.nics[0] == Nic(mac=plan.nics[0].mac, tap="svm77n0", device=None)
    assert d.nics[1].tap is None and d.nics[1].device.endswith("macvtap1")
    assert d.boot.kernel == "/img/vmlinux"
    resolved = resolved_definition(d, (VolumeInfo(d.disks[2].path, 1, 2, 4096, "qcow2"),))
    assert resolved.disks[2].format == "qcow2" and resolved.disks[:2] == d.disks[:2]
    assert VMDefinition.from_json(resolved.to_json()) == resolved


def test_plans_are_deterministic_and_job_specific():
    spec = "name: a\nimage: deb\nnetworks: [{network: lan}]\n"
    assert plan_for(spec) == plan_for(spec)
    assert plan_for(spec).nics[0].mac != plan_for(spec, ctx(job_id=78)).nics[0].mac


def test_multi_vm_plan_gives_each_node_its_vm():
    spec = "name: vc\nimage: deb\ncount: 3\nnetworks: [{network: private}]\n"
    nodes = ("n1", "n2", "n3")
    plans = [plan_for(spec, ctx(node=n, nodes=nodes), Holding(vnis={"private": 1234})) for n in nodes]
    assert [yaml.safe_load(p.seed.meta_data)["local-hostname"] for p in plans] == ["vc-0", "vc-1", "vc-2"]
    assert {p.nics[0].vni for p in plans} == {1234}
    assert len({p.nics[0].mac for p in plans}) == 3
    addresses = [yaml.safe_load(p.seed.network_config)["ethernets"]["eth0"]["addresses"][0] for p in plans]
    assert addresses == ["192.168.50.1/24", "192.168.50.2/24", "192.168.50.3/24"]
    vendor = yaml.safe_load(plans[1].seed.vendor_data)
    hosts = next(f["content"] for f in vendor["write_files"] if f["path"] == "/etc/hosts")
    assert "192.168.50.3 vc-2" in hosts and "192.168.50.1 vc-0" in hosts


def test_firmware_image_boots_without_kernel():
    d = plan_for("name: f\nimage: fw\n").definition
    assert d.boot == Boot(kernel=None, initrd=None, cmdline=None, firmware="/img/CLOUDHV.fd")


@pytest.mark.parametrize("user_data", [None, "#cloud-config\npackages: [htop]\n", "#!/bin/sh\necho hi\n"])
def test_ssh_keys_reach_the_seed_whatever_the_user_data(user_data):
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHqZrH0kXH3kq7mJ8CwLrDkYbI6RmDsZ4bq2m3M8kN7c a@b"
    spec = {"name": "k", "image": "deb", "cloud_init": {"ssh_authorized_keys": [key]}}
    if user_data:
        spec["cloud_init"]["user_data"] = user_data
    plan = plan_for(yaml.safe_dump(spec))
    assert key in plan.seed.user_data + (plan.seed.vendor_data or "")
    if user_data and user_data.startswith("#!"):
        assert plan.seed.user_data == user_data


@pytest.mark.parametrize("spec", ["name: r\nimage: deb\n",
                                  "name: vc\nimage: deb\ncount: 2\nnetworks: [{network: private}]\n"])
def test_vendor_data_makes_cloud_init_print_the_ready_line(spec):
    from slurm_vm.limits import GUEST_READY_MARKER
    vendor = yaml.safe_load(plan_for(spec, ctx(nodes=("n1", "n2")) if "count" in spec else None, Holding(vnis={"private": 1001})).seed.vendor_data)
    assert vendor["final_message"].startswith(GUEST_READY_MARKER + " ")
    if "count" in spec:
        assert any(f["path"] == "/etc/hosts" for f in vendor["write_files"]) and vendor["manage_etc_hosts"] is False


def _addresses(plan) -> list[str]:
    return yaml.safe_load(plan.seed.network_config)["ethernets"]["eth0"]["addresses"]


def test_private_network_needs_an_agreed_vni():
    with pytest.raises(NodeError, match="no VNI was agreed"):
        plan_for("name: a\nimage: deb\nnetworks: [{network: private}]\n")


def test_shared_network_addresses_come_from_the_agreed_holding():
    spec = "name: s\nimage: deb\ncount: 2\nnetworks: [{network: lan}, {network: shared}]\n"
    holding = Holding(offsets={("shared", 1): (100, 103)})
    nodes = ("n1", "n2")
    plans = [plan_for(spec, ctx(node=n, nodes=nodes), holding) for n in nodes]
    nets = [yaml.safe_load(p.seed.network_config)["ethernets"]["eth1"]["addresses"] for p in plans]
    assert nets == [["10.3.0.100/24", "fd00:3::64/64"], ["10.3.0.103/24", "fd00:3::67/64"]]
    with pytest.raises(NodeError, match="no address was agreed"):
        plan_for(spec, ctx(node="n1", nodes=nodes))


def test_static_address_gets_its_ipv6_twin():
    plan = plan_for("name: s\nimage: deb\nnetworks: [{network: shared, address: 10.3.0.7/24}]\n",
                    holding=Holding(offsets={("shared", 0): (7,)}))
    assert _addresses(plan) == ["10.3.0.7/24", "fd00:3::7/64"]


def test_unicast_nic_knows_its_peers():
    spec = "name: u\nimage: deb\ncount: 3\nnetworks: [{network: uni}]\n"
    nodes = ("n1", "n2", "n3")
    underlays = {"uni": {"n1": "fd00::1", "n2": "fd00::2", "n3": "fd00::3"}}
    plan = plan_for(spec, ctx(node="n2", nodes=nodes), Holding(vnis={"uni": 1001}), underlays)
    nic = plan.nics[0]
    assert (nic.vni, nic.unicast_local, nic.unicast_peers) == (1001, "fd00::2", ("fd00::1", "fd00::3"))
    assert _addresses(plan) == ["192.168.51.2/24", "fd00:51::2/64"]
    with pytest.raises(NodeError, match="no underlay addresses"):
        plan_for(spec, ctx(node="n2", nodes=nodes), Holding(vnis={"uni": 1001}))
