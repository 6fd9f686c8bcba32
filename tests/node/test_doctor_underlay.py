"""`node doctor` checks the VXLAN underlay (guard devices and rules, networks/underlay.py) through the System:
missing on a node with VXLAN networks it is a finding, `--fix` remakes it; no VXLAN networks, no check."""

from __future__ import annotations

from slurm_vm.config import parse_config
from slurm_vm.networks.underlay import UnderlayPlan
from slurm_vm.node.doctor import UNDERLAY, run_doctor

from .fake_system import FakeSystem
from .test_live_states import squeue_reporting
from .test_objects import config_text


def test_missing_underlay_is_reported_and_fixed(tmp_path):
    config = parse_config(config_text(str(tmp_path / "state")), "config")
    system = FakeSystem()
    found = run_doctor(config, squeue_reporting(tmp_path, 1, "RUNNING"), fix=False, node="n1", system=system)
    assert [(f.kind, f.name, f.fixed) for f in found] == [(UNDERLAY, "no VXLAN guard", False)]
    assert str(found[0]) == "no VXLAN guard"
    (tmp_path / "bin").rename(tmp_path / "bin0")
    fixed = run_doctor(config, squeue_reporting(tmp_path, 1, "RUNNING"), fix=True, node="n1", system=system)
    assert [(f.kind, f.fixed) for f in fixed] == [(UNDERLAY, True)] and str(fixed[0]).endswith("(fixed)")
    assert system.underlay == UnderlayPlan((4789,), ("br-admin0",))      # the guards and rules were made


def test_no_vxlan_networks_no_underlay_check(tmp_path):
    config = parse_config("images: {}\nnetworks: {lan: {kind: bridge, bridge: br0}}\n"
                          f"state_dir: {tmp_path}/state\n", "config")
    assert run_doctor(config, squeue_reporting(tmp_path, 1, "RUNNING"), fix=False, node="n1",
                      system=FakeSystem()) == []
