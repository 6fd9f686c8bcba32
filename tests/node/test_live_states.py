"""One set of live job states (slurm/states.py) for `node doctor`, the allocator and the read commands.

`node doctor --fix` runs against the real CliBackend, whose `squeue` is a script that reports the job in
one state (the transitional states cannot be held still on a real cluster), and the in-memory node.
"""

from __future__ import annotations

import os
import stat

import pytest

from slurm_vm.config import parse_config
from slurm_vm.node.doctor import find_leftovers, run_doctor
from slurm_vm.node.journal import Journal
from slurm_vm.node.prepare import prepare_node
from slurm_vm.slurm.cli import SEP, CliBackend
from slurm_vm.slurm.states import ACTIVE_STATES, LIVE_STATES, QUEUED_STATES

from .fake_system import FakeSystem
from .test_objects import config_text, node  # noqa: F401  (node: the fixture)

TRANSITIONAL = ("SIGNALING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "RESIZING", "STAGE_OUT",
                "SUSPENDED", "STOPPED")
ENDED = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY")


def squeue_reporting(tmp_path, job_id: int, state: str) -> CliBackend:
    """A CliBackend whose squeue answers with one job in `state` on node n1."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fields = [str(job_id), "svm-web", "alice", state, "n1", "1", "1G", "1:00", "1:00:00", "now", "None",
              "slurm-vm:1:z:x"]
    script = bin_dir / "squeue"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{SEP.join(fields)}'\n")
    script.chmod(stat.S_IRWXU)
    return CliBackend(timeout=10, bin_dir=str(bin_dir))


@pytest.fixture
def prepared(node):
    state, plan = node
    system = FakeSystem()
    prepare_node(plan, Journal(state, plan.job_id), system)
    return parse_config(config_text(state), "config"), state, system


@pytest.mark.parametrize("state", TRANSITIONAL + ("RUNNING",))
def test_doctor_fix_keeps_the_objects_of_a_job_in_every_live_state(tmp_path, prepared, state):
    config, state_dir, system = prepared
    before = find_leftovers(state_dir, set(), system)
    assert run_doctor(config, squeue_reporting(tmp_path, 4321, state), fix=True, node="n1", system=system) == []
    assert find_leftovers(state_dir, set(), system) == before


@pytest.mark.parametrize("state", ENDED)
def test_doctor_fix_removes_the_objects_of_an_ended_job(tmp_path, prepared, state):
    config, state_dir, system = prepared
    fixed = run_doctor(config, squeue_reporting(tmp_path, 4321, state), fix=True, node="n1", system=system)
    assert fixed and all(f.fixed for f in fixed)
    assert find_leftovers(state_dir, set(), system) == []


def test_the_sets_agree():
    assert set(TRANSITIONAL) <= LIVE_STATES and not set(ENDED) & ACTIVE_STATES
    assert not LIVE_STATES & QUEUED_STATES


def test_one_definition_of_job_states_in_the_tree():
    """No module outside slurm/ spells a Slurm state that only a set of states would need (slurm/states.py has
    the sets; slurm/accounting.py lists what sacct may select)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    package = os.path.join(root, "slurm_vm")
    spelled = []
    for folder, _, files in os.walk(package):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".py") and not path.startswith(os.path.join(package, "slurm", "")):
                with open(path) as fh:
                    text = fh.read()
                spelled += [f"{path}: {s}" for s in ("SIGNALING", "REQUEUE_HOLD", "STAGE_OUT", "RESIZING")
                            if f'"{s}"' in text]
    assert spelled == []
