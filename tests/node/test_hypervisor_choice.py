"""`hypervisor: auto` is resolved once, by the prolog on the node: the concrete hypervisor and the share
transport it serves go into vm.json, and the guest's mount config (vendor-data `mounts:`) says the same
transport, for every hypervisor choice (issue 21: a guest told "9p" by a cloud-hypervisor node got no shares).
"""

from __future__ import annotations

import itertools
import os

import pytest
import yaml

from slurm_vm.config import parse_config
from slurm_vm.hypervisor import registry
from slurm_vm.hypervisor.definition import VMDefinition
from slurm_vm.hypervisor.kvm import choose_backend
from slurm_vm.launcher.launcher import share_daemons
from slurm_vm.hypervisor.shares import guest_fstype
from slurm_vm.node.context import JobContext
from slurm_vm.node.hostfacts import HostFacts, may_read_write
from slurm_vm.node.plan import make_plan
from slurm_vm.spec import parse_spec

CH = "/opt/ch/cloud-hypervisor"
QEMU = "/usr/bin/qemu-system-x86_64"
NODES = {"kvm and cloud-hypervisor": HostFacts(True, frozenset({CH, QEMU})),
         "kvm, no cloud-hypervisor": HostFacts(True, frozenset({QEMU})),
         "cloud-hypervisor, no kvm": HostFacts(False, frozenset({CH, QEMU}))}


def config(default: str, transport: str):
    return parse_config(f"""
state_dir: /var/lib/svm
images: {{deb: {{path: /img/deb.qcow2, kernel: /img/vmlinux}}}}
networks: {{lan: {{kind: bridge, bridge: br0}}}}
hypervisor: {{default: {default}, cloud_hypervisor_binary: {CH}, qemu_binary: {QEMU}}}
mounts: {{allowed: [/scratch], transport: {transport}}}
""", "config")


def plan(spec_hypervisor: str, default: str, transport: str, facts: HostFacts):
    cfg = config(default, transport)
    spec = parse_spec(f"name: w\nimage: deb\nhypervisor: {spec_hypervisor}\n"
                      "mounts: [{source: /scratch/alice, target: /data}]\n", "spec", cfg)
    ctx = JobContext(job_id=7, uid=4201, gid=4201, user="alice", node="n1", nodes=("n1",), cluster="c", comment="")
    return make_plan(spec, cfg, ctx, facts=facts)


def guest_fstypes(p) -> set[str]:
    return {entry[2] for entry in yaml.safe_load(p.seed.vendor_data)["mounts"]}


CHOICES = list(itertools.product(registry.NAMES, registry.NAMES, registry.SHARE_TRANSPORTS, NODES))


@pytest.mark.parametrize("spec_hypervisor,default,transport,node", CHOICES)
def test_prolog_vm_json_and_guest_agree_on_the_share_transport(spec_hypervisor, default, transport, node):
    p = plan(spec_hypervisor, default, transport, NODES[node])
    defn = VMDefinition.from_json(p.definition.to_json())          # what the launcher reads, parsed as it does
    assert defn.hypervisor in registry.HYPERVISORS                 # concrete: the prolog decided `auto`
    assert defn.share_transport in registry.HYPERVISORS[defn.hypervisor].share_transports
    assert guest_fstypes(p) == {guest_fstype(defn.share_transport)}
    assert choose_backend(defn)[0] == defn.hypervisor               # the launcher runs what vm.json says
    assert registry.share_transport(defn.hypervisor, defn.share_transport) == defn.share_transport


def test_auto_picks_cloud_hypervisor_where_kvm_and_its_binary_are_and_serves_virtiofs():
    p = plan("auto", "auto", "9p", NODES["kvm and cloud-hypervisor"])
    assert p.definition.hypervisor == "cloud-hypervisor" and p.definition.share_transport == "virtiofs"
    assert guest_fstypes(p) == {"virtiofs"}
    runtime = registry.runtime_class("cloud-hypervisor")(p.definition, "kvm", [0])
    assert len(share_daemons(p.definition, runtime, "/dev/null").defn.shares) == 1   # virtiofsd is started


@pytest.mark.parametrize("node", ["kvm, no cloud-hypervisor", "cloud-hypervisor, no kvm"])
def test_auto_falls_back_to_qemu_with_the_sites_transport(node):
    p = plan("auto", "auto", "9p", NODES[node])
    assert (p.definition.hypervisor, p.definition.share_transport, guest_fstypes(p)) == ("qemu", "9p", {"9p"})


def test_a_checkpointing_vm_gets_the_hypervisor_every_node_has():
    cfg = parse_config("state_dir: /s\nimages: {deb: {path: /i.qcow2, kernel: /k}}\ncheckpoint: {dir: /ck/%u}\n"
                       f"hypervisor: {{cloud_hypervisor_binary: {CH}}}\n", "config")
    spec = parse_spec("name: w\nimage: deb\non_preempt: checkpoint\n", "spec", cfg)
    ctx = JobContext(job_id=7, uid=4201, gid=4201, user="alice", node="n1", nodes=("n1",), cluster="c", comment="")
    assert make_plan(spec, cfg, ctx, facts=NODES["kvm and cloud-hypervisor"]).definition.hypervisor == "qemu"


def test_vm_json_refuses_a_transport_its_hypervisor_does_not_serve():
    p = plan("cloud-hypervisor", "auto", "virtiofs", NODES["kvm and cloud-hypervisor"])
    text = p.definition.to_json().replace('"share_transport": "virtiofs"', '"share_transport": "9p"')
    with pytest.raises(Exception, match="cloud-hypervisor serves shares over virtiofs only"):
        VMDefinition.from_json(text)


def test_kvm_access_is_judged_for_the_jobs_user(tmp_path):
    dev = tmp_path / "kvm"
    dev.write_text("")
    owner, group = os.stat(dev).st_uid, os.stat(dev).st_gid
    dev.chmod(0o660)
    assert may_read_write(str(dev), owner, set())
    assert may_read_write(str(dev), 54321, {group})               # the kvm group grants it
    assert not may_read_write(str(dev), 54321, {group + 1})
    dev.chmod(0o666)
    assert may_read_write(str(dev), 54321, {group + 1})
