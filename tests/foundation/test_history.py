"""`slurm-vm list --all` / `status` from sacct: the parsing, the grouping of requeued runs, the options.

The same lines through real slurmdbd on both Slurm versions: tests/e2e/test_accounting.py.
"""

from __future__ import annotations

import datetime

import pytest

from slurm_vm.errors import EXIT_USAGE
from slurm_vm.history import OUTCOMES, OptionError, history_of, parse_states, since_time
from slurm_vm.launcher.launcher import ExitCode
from slurm_vm.slurm.accounting import SACCT_FIELDS, parse_sacct, sacct_argv
from slurm_vm.slurm.states import SACCT_STATES
from slurm_vm.slurm.cli import SEP
from slurm_vm.transport import encode_comment

VM_COMMENT = encode_comment("name: web\nimage: tiny\n", "00" * 16)


def line(job_id="41", name="vm-web", user="svmtest", state="COMPLETED", start="2026-12-08T00:10:00",
         end="2026-12-08T00:11:00", elapsed="00:01:00", nodes="tc-n[1-2]", exit_code="0:0", comment=VM_COMMENT,
         reason="None") -> str:
    values = {"JobIDRaw": job_id, "JobName": name, "User": user, "State": state, "Submit": "2026-12-08T00:09:59",
              "Start": start, "End": end, "Elapsed": elapsed, "NodeList": nodes, "AllocCPUS": "2", "ReqMem": "576M",
              "Timelimit": "00:10:00", "ExitCode": exit_code, "Reason": reason, "Comment": comment}
    return SEP.join(values[f] for f in SACCT_FIELDS)


def step(job_id: str, which: str = "batch", exit_code: str = "0:0") -> str:
    """A step's line as sacct prints it under its job (most fields empty)."""
    values = dict.fromkeys(SACCT_FIELDS, "")
    values.update({"JobIDRaw": f"{job_id}.{which}", "JobName": which, "State": "COMPLETED", "ExitCode": exit_code})
    return SEP.join(values[f] for f in SACCT_FIELDS)


def test_a_line_parses_by_position_with_the_comment_last():
    [run] = parse_sacct(line(state="CANCELLED by 4201", exit_code="0:15", comment=VM_COMMENT + "|x" + SEP + "y"))
    assert (run.job_id, run.name, run.user, run.state, run.state_detail) == (41, "vm-web", "svmtest", "CANCELLED",
                                                                             "by 4201")
    assert run.nodes == ("tc-n1", "tc-n2") and (run.exit_code, run.exit_signal) == (0, 15)
    assert run.comment == VM_COMMENT + "|x" + SEP + "y" and run.cpus == 2 and run.memory == "576M"


def test_a_job_that_never_started_has_empty_times_and_nodes():
    [run] = parse_sacct(line(state="CANCELLED by 0", start="Unknown", end="2026-12-08T00:11:00",
                             nodes="None assigned"))
    assert run.start == "" and run.nodes == ()
    [record] = history_of([run])
    assert record.outcome == "cancelled before it started"


def test_steps_arrays_and_garbage_are_skipped():
    text = "\n".join([line(job_id="12_3"), line(job_id="13+0"), "sacct: warning", "", line(job_id="14")])
    assert [r.job_id for r in parse_sacct(text)] == [14]


def test_only_vm_jobs_are_listed_and_requeued_runs_are_grouped():
    runs = parse_sacct("\n".join([
        line(job_id="50", state="PREEMPTED", exit_code="0:0", nodes="tc-n1"), step("50", exit_code="8:0"),
        step("50", "extern"),
        line(job_id="51", name="wrap", comment=""), step("51"),           # a plain job
        line(job_id="52", name="vm-x", comment="my own comment"),          # named like a VM, but not one
        line(job_id="50", state="COMPLETED", nodes="tc-n2"), step("50"),
        line(job_id="53", state="TIMEOUT", exit_code="0:0"), step("53", exit_code="3:0"),
    ]))
    assert [r.launcher_exit for r in runs] == [(8, 0), (0, 0), None, (0, 0), (3, 0)]
    records = history_of(runs)
    assert [(r.job_id, r.state, r.restarts, r.earlier_runs) for r in records] == [
        (50, "COMPLETED", 1, ("PREEMPTED",)), (53, "TIMEOUT", 0, ())]
    assert records[0].nodes == ("tc-n2",) and records[0].outcome == "guest powered off"
    assert records[1].outcome == "shut down on a signal" and records[1].exit_code == "3:0"
    assert records[0].as_json()["earlier_runs"] == ["PREEMPTED"]


def test_the_exit_code_is_the_batch_steps_not_the_cancelled_allocations():
    """sacct's allocation line of a cancelled or timed-out job says 0:0; its batch step has the launcher's."""
    [record] = history_of(parse_sacct("\n".join([line(state="CANCELLED by 4201", exit_code="0:0"),
                                                  step("41", exit_code="4:0")])))
    assert (record.exit_code, record.outcome) == ("4:0", "hard stop: guest ignored the power button")
    [bare] = history_of(parse_sacct(line(state="TIMEOUT", exit_code="0:0")))
    assert (bare.exit_code, bare.outcome) == ("", "")     # no step line: nothing to tell


def test_without_stored_comments_the_job_name_marks_vm_jobs():
    """Sites without AccountingStoreFlags=job_comment: the comment column is empty."""
    records = history_of(parse_sacct("\n".join([line(job_id="60", comment=""),
                                                line(job_id="61", name="wrap", comment="")])))
    assert [(r.job_id, r.name) for r in records] == [(60, "web")]


def test_every_launcher_exit_code_has_an_outcome():
    assert set(OUTCOMES) == {int(c) for c in ExitCode}


def test_a_run_whose_prolog_failed_has_no_launcher_exit_code():
    """Slurm requeues (held) a job whose prolog failed; its batch step is recorded CANCELLED with no exit code."""
    runs = parse_sacct("\n".join([line(state="REQUEUED", exit_code="0:0"), step("41", exit_code=""),
                                   line(state="CANCELLED by 0", start="None", nodes="None assigned")]))
    assert runs[0].launcher_exit is None
    [record] = history_of(runs)
    assert (record.state, record.restarts, record.earlier_runs) == ("CANCELLED", 1, ("REQUEUED",))
    assert record.outcome == "cancelled before it started" and record.exit_code == ""


def test_a_killed_launcher_says_so():
    [record] = history_of(parse_sacct("\n".join([line(state="FAILED", exit_code="0:9"), step("41", exit_code="0:9")])))
    assert record.outcome == "killed by signal 9" and record.exit_code == "0:9"


def test_sacct_is_asked_for_explicit_fields_every_run_every_state_and_a_window():
    argv = sacct_argv("sacct", "svmtest", "2026-11-08T00:00:00")
    assert argv[:6] == ["sacct", "-X", "-D", "-P", "-n", f"--delimiter={SEP}"]    # allocations only: a list
    assert "-X" not in sacct_argv("sacct", "svmtest", "2026-11-08T00:00:00", job_ids=(7,), steps=True)
    assert argv[argv.index("-o") + 1] == ",".join(SACCT_FIELDS)
    assert argv[argv.index("-u") + 1] == "svmtest" and argv[-4:] == ["-S", "2026-11-08T00:00:00", "-E", "now"]
    assert argv[argv.index("-s") + 1].split(",") == list(SACCT_STATES)   # held-then-cancelled jobs too
    everyone = sacct_argv("/opt/slurm/bin/sacct", None, "2000-01-01T00:00:00", job_ids=(7,), job_name="vm-web")
    assert "-a" in everyone and "-u" not in everyone and everyone[everyone.index("-j") + 1] == "7"
    assert "--name=vm-web" in everyone


@pytest.mark.parametrize("text, expected", [
    ("30m", "2026-12-08T11:30:00"), ("12h", "2026-12-08T00:00:00"),
    ("7d", "2026-12-01T12:00:00"), ("2W", "2026-11-24T12:00:00"),
    ("2026-01-31", "2026-01-31T00:00:00"), ("2026-01-31T08:15", "2026-01-31T08:15:00"),
])
def test_since_takes_durations_back_from_now_or_dates(text, expected):
    assert since_time(text, datetime.datetime(2026, 12, 8, 12, 0, 0)) == expected


@pytest.mark.parametrize("text", ["yesterday", "-3d", "0d", "7", "2026-13-01", "1d; rm -rf /", "9999999d"])
def test_a_bad_since_is_one_line_naming_the_option(text):
    with pytest.raises(OptionError) as exc:
        since_time(text)
    assert str(exc.value).startswith("--since: ") and "\n" not in str(exc.value)
    assert exc.value.exit_code == EXIT_USAGE


def test_states_are_checked_and_case_insensitive():
    assert parse_states("timeout,Cancelled") == {"TIMEOUT", "CANCELLED"}
    assert parse_states(None) == frozenset()
    with pytest.raises(OptionError, match=r"--state: unknown state 'DONE'; use one or more of BOOT_FAIL"):
        parse_states("completed,done")
