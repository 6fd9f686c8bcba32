"""Finding a VM by name or job id, and the listing's edge cases (pure: JobInfo lists, no Slurm)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from slurm_vm import transport
from slurm_vm.errors import (EXIT_AMBIGUOUS, EXIT_NOT_FOUND, EXIT_NOT_RUNNING, EXIT_NOT_YOURS, Ambiguous, NotFound,
                             NotRunning, NotYours)
from slurm_vm.lifecycle import check_job_id, choose_by_name, record_of, require_running
from slurm_vm.output import empty_listing, print_records
from slurm_vm.slurm import JobInfo

COMMENT = transport.CURRENT_PREFIX + "0" * 64


def job(job_id: int, name: str = "web", state: str = "RUNNING", user: str = "alice", vm: bool = True,
        nodes: tuple[str, ...] = ("n1",), reason: str = "None") -> JobInfo:
    return JobInfo(job_id=job_id, name=("vm-" + name) if vm else name, user=user, state=state,
                   nodes=nodes if state == "RUNNING" else (), reason=reason, comment=COMMENT if vm else "")


def test_a_name_with_one_active_job_finds_it_even_with_older_ended_ones():
    jobs = [job(5, state="COMPLETED"), job(7), job(9, state="TIMEOUT")]
    assert choose_by_name(jobs, "web", "alice").job_id == 7


def test_a_name_with_only_ended_jobs_finds_the_newest():
    jobs = [job(5, state="COMPLETED"), job(9, state="TIMEOUT")]
    assert choose_by_name(jobs, "web", "alice").job_id == 9


def test_a_name_matching_two_active_jobs_is_refused_naming_both():
    with pytest.raises(Ambiguous, match=r"matches jobs 7 \(RUNNING\), 8 \(PENDING\); give the job id") as exc:
        choose_by_name([job(8, state="PENDING"), job(7)], "web", "alice")
    assert exc.value.exit_code == EXIT_AMBIGUOUS


def test_unknown_names_and_non_vm_jobs_of_that_name_are_not_found():
    with pytest.raises(NotFound, match="no VM named 'web' for user alice") as exc:
        choose_by_name([job(3, name="vm-web", vm=False), job(4, name="db")], "web", "alice")
    assert exc.value.exit_code == EXIT_NOT_FOUND


def test_a_job_id_of_another_user_is_refused_but_root_may_name_it():
    jobs = [job(12, user="bob")]
    with pytest.raises(NotYours, match="job 12 is VM web of user bob: not your VM") as exc:
        check_job_id(jobs, 12, "alice")
    assert exc.value.exit_code == EXIT_NOT_YOURS
    assert check_job_id(jobs, 12, "root").job_id == 12


def test_a_job_id_that_is_not_a_vm_or_unknown_is_not_found():
    with pytest.raises(NotFound, match=r"job 3 \(wrap\) is not a slurm-vm job"):
        check_job_id([job(3, name="wrap", vm=False)], 3, "alice")
    with pytest.raises(NotFound, match="no job 4 known to Slurm"):
        check_job_id([], 4, "alice")


@pytest.mark.parametrize("state, reason, text", [
    ("PENDING", "Resources", "VM web is pending (reason: Resources): the console exists once it runs (job 7)"),
    ("COMPLETED", "None", "VM web (job 7) has ended (COMPLETED)"),
])
def test_commands_that_need_a_running_vm_say_why_not(state, reason, text):
    with pytest.raises(NotRunning) as exc:
        require_running(job(7, state=state, reason=reason), "the console exists")
    assert text in str(exc.value) and exc.value.exit_code == EXIT_NOT_RUNNING
    require_running(job(7), "the console exists")


def test_an_empty_listing_is_one_line_not_a_traceback():
    runner = CliRunner()
    with runner.isolation() as (out, _err, *_):
        print_records([], False, "alice", False)
    assert out.getvalue().decode() == empty_listing("alice", False) + "\n"
    assert "--ended" in empty_listing("alice", False)


def test_a_listing_of_one_pending_vm_has_aligned_columns():
    runner = CliRunner()
    with runner.isolation() as (out, _err, *_):
        print_records([record_of(job(7, state="PENDING", reason="Resources"))], False)
    header, row = out.getvalue().decode().splitlines()
    assert header.split() == ["NAME", "JOBID", "STATE", "NODES", "CPUS", "MEMORY", "UPTIME", "ADDRESS",
                              "CHECKPOINTS"]
    assert row.split()[:4] == ["web", "7", "PENDING", "Resources"]
    assert header.index("JOBID") == row.index("7")
