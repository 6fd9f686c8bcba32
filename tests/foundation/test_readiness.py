"""The readiness wait's states and its progress line (pure), and the piped progress output."""

from __future__ import annotations

import pytest

from slurm_vm.readiness import Progress, Serial, Stage, observe, render
from slurm_vm.slurm import JobInfo


def job(state: str, nodes: tuple[str, ...] = (), reason: str = "None") -> JobInfo:
    return JobInfo(job_id=12, name="vm-web", user="alice", state=state, nodes=nodes, reason=reason)


@pytest.mark.parametrize("info, serial, stage, line", [
    (job("PENDING", reason="Resources"), Serial.ABSENT, Stage.QUEUED,
     "VM web (job 12): … job pending (Resources)  [3s]"),
    (job("CONFIGURING", ("n2",)), Serial.ABSENT, Stage.QUEUED, "VM web (job 12): … job configuring  [3s]"),
    (job("RUNNING", ("n2",)), Serial.ABSENT, Stage.RUNNING,
     "VM web (job 12): ✓ job running → ✓ node n2 → … VMM starting  [3s]"),
    (job("RUNNING", ("n2",)), Serial.STARTED, Stage.VMM_STARTED,
     "VM web (job 12): ✓ job running → ✓ node n2 → ✓ VMM started → … guest booting  [3s]"),
    (job("RUNNING", ("n2",)), Serial.READY, Stage.GUEST_READY,
     "VM web (job 12): ✓ job running → ✓ node n2 → ✓ VMM started → ✓ guest ready  [3s]"),
])
def test_each_state_has_its_stage_and_line(info, serial, stage, line):
    progress = observe(info, serial, 3.2)
    assert progress.stage is stage
    assert render(progress) == line


def test_a_ready_serial_before_the_job_runs_is_not_ready():
    assert observe(job("COMPLETING", ("n2",)), Serial.READY, 1).stage is Stage.QUEUED


def test_piped_progress_prints_each_change_once(capsys):
    from slurm_vm.output import progress_reporter
    states = [observe(job("PENDING", reason="Priority"), Serial.ABSENT, t) for t in (0, 1)] + \
             [observe(job("RUNNING", ("n1",)), s, t) for s, t in ((Serial.ABSENT, 2), (Serial.STARTED, 3),
                                                                    (Serial.STARTED, 4), (Serial.READY, 5))]
    with progress_reporter(key=lambda p: (p.stage, p.state, p.reason), text=render) as report:
        for progress in states:
            report(progress)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ", 1)[1].rsplit("  [", 1)[0].split(" → ")[-1] for line in lines] == \
        ["… job pending (Priority)", "… VMM starting", "… guest booting", "✓ guest ready"]
    assert isinstance(states[0], Progress)
