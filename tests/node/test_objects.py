"""prepare, teardown and doctor for every kind of host object, against the in-memory FakeSystem (no root).

The root tests (test_hooks_root.py, test_hostile.py) run the same code on the real HostSystem.
"""

from __future__ import annotations

import json
import os

import pytest

from slurm_vm.config import parse_config
from slurm_vm.errors import NodeError, ShareError, VolumeError, is_users_fault
from slurm_vm.hypervisor.definition import VMDefinition
from slurm_vm.networks.allocation import Holding
from slurm_vm.node.context import JobContext
from slurm_vm.node.doctor import find_leftovers
from slurm_vm.node.journal import Journal
from slurm_vm.node.layout import journal_dir
from slurm_vm.node.objects import KINDS, Scope, kind_of
from slurm_vm.node.plan import make_plan
from slurm_vm.node.prepare import prepare_node
from slurm_vm.node.teardown import teardown_job, undo_journal
from slurm_vm.spec import parse_spec

from .fake_system import FakeSystem

SPEC = """
name: web
image: deb
disk: 2G
volumes: [{path: /data/v.img}]
networks: [{network: lan}, {network: private}, {network: direct}]
mounts: [{source: /scratch/alice/data, target: /data}]
"""


def config_text(state: str) -> str:
    return f"""
state_dir: {state}
images:
  deb: {{path: /img/deb.qcow2, kernel: /img/vmlinux}}
networks:
  lan: {{kind: bridge, bridge: br-admin0}}
  private: {{kind: vxlan, parent: eth0, vni_range: [1000, 1999]}}
  direct: {{kind: macvtap, parent: eth0}}
mounts: {{allowed: [/scratch]}}
"""


@pytest.fixture
def node(tmp_path):
    state = str(tmp_path / "state")
    os.makedirs(journal_dir(state))
    config = parse_config(config_text(state), "config")
    ctx = JobContext(job_id=4321, uid=5000, gid=5000, user="alice", node="n1", nodes=("n1",), cluster="c",
                     comment="")
    plan = make_plan(parse_spec(SPEC, "spec", config), config, ctx, Holding(vnis={"private": 1077}))
    return state, plan


def count_creates(plan, state) -> int:
    system = FakeSystem()
    prepare_node(plan, Journal(state, plan.job_id), system)
    return system.creates


def test_prepare_makes_every_kind_and_teardown_removes_all(node):
    state, plan = node
    system = FakeSystem()
    journal = Journal(state, plan.job_id)
    prepare_node(plan, journal, system)
    recorded = {entry.kind for entry in journal.entries()}
    assert recorded == {"volume_reservations", "job_dir", "overlay", "file", "vxlan_segment", "tap", "macvtap",
                        "port_filter"}
    assert [p.device for p in system.tables[plan.job_id]] == [n.ifname for n in plan.nics]   # every port
    assert plan.job_dir in system.dirs and plan.overlay in system.files and plan.seed.path in system.files
    assert {link["kind"] for link in system.links.values()} == {"tap", "macvtap", "bridge"}
    assert system.owners[plan.job_dir] == (5000, 5000)          # handed over to the user last
    definition = VMDefinition.from_json(system.files[plan.definition.path("vm.json")].decode())
    assert [d.format for d in definition.disks] == ["qcow2", "raw", "raw"]   # the volume's probed format
    assert [s.path for s in definition.shares] == ["/resolved/scratch/alice/data"]   # resolved as the user
    report = teardown_job(state, plan.job_id, 5000, system)
    assert report.errors == [] and system.empty() and not journal.exists()
    assert teardown_job(state, plan.job_id, 5000, system).errors == []   # idempotent


@pytest.mark.parametrize("failing", range(11))
def test_a_failure_at_any_create_rolls_back_everything(node, failing):
    state, plan = node
    assert count_creates(plan, state) == 11 or pytest.fail("the plan's objects changed: update the range")
    teardown_job(state, plan.job_id, None, FakeSystem())
    system = FakeSystem(fail_at_create=failing)
    journal = Journal(state, plan.job_id)
    with pytest.raises(NodeError, match="injected failure"):
        prepare_node(plan, journal, system)
    assert system.empty(), (system.dirs, system.files, system.links, system.segments, system.reservations,
                            system.tables)
    assert not journal.exists()


@pytest.mark.parametrize("unreadable,error,step", [("/data/v.img", VolumeError, "step volumes"),
                                                   ("/scratch/alice/data", ShareError, "step shares")])
def test_a_users_own_fault_makes_nothing_and_is_the_users(node, unreadable, error, step):
    state, plan = node
    system = FakeSystem(unreadable={unreadable})
    with pytest.raises(error) as caught:
        prepare_node(plan, Journal(state, plan.job_id), system)
    assert is_users_fault(caught.value) and step in str(caught.value)
    assert system.creates == 0 and system.empty()


def test_sweep_removes_what_a_lost_journal_named(node):
    state, plan = node
    system = FakeSystem()
    journal = Journal(state, plan.job_id)
    prepare_node(plan, journal, system)
    journal.remove()
    assert teardown_job(state, plan.job_id, None, system).errors == []
    assert system.empty()


def test_undo_refuses_objects_that_are_not_the_jobs(node):
    state, plan = node
    system = FakeSystem(dirs={"/etc"}, files={"/etc/passwd": b"x"}, links={"svm99n0": {}, "eth0": {}})
    journal = Journal(state, plan.job_id)
    journal.record("file", {"path": "/etc/passwd"})
    journal.record("job_dir", {"path": "/etc"})
    journal.record("tap", {"name": "svm99n0"})
    journal.record("link", {"name": "eth0"})
    journal.record("vxlan_segment", {"vni": "1000; rm"})
    journal.record("no_such_kind", {})
    report = undo_journal(state, journal, system)
    assert len(report.errors) == 6 and report.undone == []
    assert "/etc/passwd" in system.files and "/etc" in system.dirs and set(system.links) == {"svm99n0", "eth0"}
    journal.remove()


def test_doctor_finds_every_kind_of_leftover_of_dead_jobs_only(node):
    state, plan = node
    system = FakeSystem()
    prepare_node(plan, Journal(state, plan.job_id), system)
    kinds = {f.kind for f in find_leftovers(state, set(), system)}
    assert kinds == {"journal", "job dir", "link", "VXLAN segment reference", "volume reservation",
                     "port filter table", "macvtap device nodes"}
    assert find_leftovers(state, {plan.job_id}, system) == []
    teardown_job(state, plan.job_id, None, system)
    assert find_leftovers(state, set(), system) == []


def test_every_kind_round_trips_through_the_journal_format(node):
    state, plan = node
    journal = Journal(state, plan.job_id)
    prepare_node(plan, journal, FakeSystem())
    with open(journal.path) as fh:
        lines = [json.loads(line) for line in fh]
    assert all(set(line) == {"kind", "data"} and kind_of(line["kind"]) is not None for line in lines)
    assert set(KINDS) >= {line["kind"] for line in lines}
    assert Scope(state, plan.job_id).inside_job_dir(plan.overlay)
    journal.remove()
