"""Checkpoints in `slurm-vm list` and `checkpoint --list`: counted and summed per job from the user's checkpoint
dir (real files written as the launcher writes them), queued jobs that will restore marked."""

from __future__ import annotations

import getpass

from click.testing import CliRunner

from slurm_vm import transport
from slurm_vm.checkpoint import store
from slurm_vm.checkpoint.listing import job_ids_in, summary, unlisted_note, user_checkpoints
from slurm_vm.config import parse_config
from slurm_vm.lifecycle import record_of, with_checkpoints
from slurm_vm.output import print_records
from slurm_vm.slurm import JobInfo

from .test_manifest import UID, save

ME = getpass.getuser()


def config(root: str):
    return parse_config(f"images: {{deb: {{path: /img/deb.qcow2}}}}\ncheckpoint: {{dir: '{root}/%u'}}\n",
                        "config.yaml")


def job(job_id: int, state: str = "RUNNING", user: str = ME) -> JobInfo:
    return JobInfo(job_id=job_id, name="vm-web", user=user, state=state, nodes=("n1",) if state == "RUNNING" else (),
                   reason="None", comment=transport.CURRENT_PREFIX + "0" * 64)


def test_each_jobs_checkpoints_are_counted_and_summed(tmp_path):
    root = str(tmp_path)
    save(root, 42)
    save(root, 42)
    store.new_checkpoint_dir(store.job_dir(root, 42), UID)         # a save under way: not counted as complete
    save(root, 7)
    (tmp_path / "job-x").mkdir()                                      # not a job dir: ignored
    (tmp_path / "notes.txt").write_text("")
    assert job_ids_in(root) == [7, 42]
    found = user_checkpoints(root, UID)
    assert (found[42].count, found[42].size_bytes, found[42].unfinished) == (2, 10000, 1)
    assert (found[7].count, found[7].image) == (1, "tiny")
    assert user_checkpoints(str(tmp_path / "missing"), UID) == {} and user_checkpoints(None) == {}


def test_summary_marks_queued_jobs_that_will_restore():
    assert summary(0, 0, "RUNNING") == "-"
    assert summary(1, 101 << 20, "RUNNING") == "1 (101 MiB)"
    assert summary(2, 300 << 20, "PENDING") == "2 (300 MiB), restores"


def test_list_shows_the_checkpoint_column_and_a_note_about_other_jobs(tmp_path):
    cfg = config(str(tmp_path))
    user_dir = cfg.checkpoint.user_dir(ME)
    save(user_dir, 42)
    save(user_dir, 9)                    # a job cancelled while pending: not in Slurm's list any more
    records = with_checkpoints([record_of(job(41)), record_of(job(42, state="PENDING"))], cfg)
    assert [(r.checkpoints, r.checkpoint_bytes) for r in records] == [(0, 0), (1, 5000)]
    note = unlisted_note(user_dir, {r.job_id for r in records})
    assert note.startswith("1 job(s) not listed here still have checkpoints") and "--drop JOBID" in note
    runner = CliRunner()
    with runner.isolation() as (out, _err, *_):
        print_records(records, False, note=note)
    header, first, second, last = out.getvalue().decode().splitlines()
    assert header.split()[-1] == "CHECKPOINTS" and first.split()[-1] == "-"
    assert second.endswith("1 (0 MiB), restores") and last == note
    assert records[1].as_json()["checkpoints"] == 1


def test_without_a_checkpoint_dir_nothing_is_read(tmp_path):
    cfg = parse_config("images: {deb: {path: /img/deb.qcow2}}\n", "config.yaml")
    records = [record_of(job(1))]
    assert with_checkpoints(records, cfg) == records
    assert unlisted_note(None, set()) == ""
