"""Who requeues a checkpointed job: the launcher or Slurm (the sequences measured on 22.05 and 24.11)."""

from __future__ import annotations

import pytest

from slurm_vm.slurm.requeue import decide, slurm_version

IN_GRACE = {"JobState": "RUNNING", "PreemptTime": "2026-12-01T10:44:06", "Restarts": "0"}      # 24.11: USR1 at start
REQUEUED = {"JobState": "PENDING", "PreemptTime": "None", "Restarts": "1"}                    # 22.05: TERM at end
RUNNING = {"JobState": "RUNNING", "PreemptTime": "None", "Restarts": "0"}


@pytest.mark.parametrize("text,expected", [
    ("slurm-wlm 24.11.5\n", (24, 11)), ("slurm 22.05.8", (22, 5)), ("slurm 25.05.0-0rc1", (25, 5)),
    ("", None), ("slurm", None), ("slurm x.y", None), ("scontrol: error: something", None),
])
def test_slurm_version(text, expected):
    assert slurm_version(text) == expected


def test_preempted_in_grace_on_24_11_is_left_to_slurm():
    # A `scontrol requeue` here would leave Slurm's GRACE_PREEMPT mark on the job: its next run would be
    # requeued again when it ends (seen on 24.11.5: Restarts=2 after `slurm-vm stop`).
    decision = decide("preempt", IN_GRACE, 0, (24, 11))
    assert not decision.by_launcher and "24.11" in decision.why
    assert not decide("preempt", IN_GRACE, 0, (24, 5)).by_launcher


def test_preempted_in_grace_before_24_05_requeues_itself():
    assert decide("preempt", IN_GRACE, 0, (22, 5)).by_launcher
    assert decide("preempt", IN_GRACE, 0, (23, 11)).by_launcher
    assert decide("preempt", IN_GRACE, 0, None).by_launcher      # version unknown: as before 24.05


@pytest.mark.parametrize("version", [(22, 5), (24, 11), None])
def test_preempted_after_grace_is_already_requeued(version):
    assert not decide("preempt", REQUEUED, 0, version).by_launcher
    later_run = {"JobState": "RUNNING", "PreemptTime": "None", "Restarts": "3"}
    assert not decide("preempt", later_run, 2, version).by_launcher


@pytest.mark.parametrize("version", [(22, 5), (24, 11), None])
@pytest.mark.parametrize("reason", ["timeout", "manual"])
def test_time_limit_and_manual_always_requeue_themselves(reason, version):
    assert decide(reason, RUNNING, 0, version).by_launcher
    assert decide(reason, None, 0, version).by_launcher


def test_slurm_not_answering_after_a_preemption_save():
    assert not decide("preempt", None, 0, (24, 11)).by_launcher
    assert decide("preempt", None, 0, (22, 5)).by_launcher
