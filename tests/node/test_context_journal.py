"""The job context read from a hook's environment, and the journal tracker (no root needed)."""

from __future__ import annotations

import os
import pwd

import pytest

from slurm_vm.errors import NodeError
from slurm_vm.node.context import job_context_from_env
from slurm_vm.node.journal import Journal


def some_user() -> pwd.struct_passwd:
    for entry in pwd.getpwall():
        if entry.pw_uid >= 1 and entry.pw_uid < 65534:
            return entry
    pytest.skip("no unprivileged user in the user database")


def env_for(uid: int, **extra: str) -> dict[str, str]:
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_UID": str(uid), "SLURM_JOB_GID": "100", "SLURMD_NODENAME": "n2",
           "SLURM_JOB_NODELIST": "n[1-3]", "SLURM_CLUSTER_NAME": "c1", "SLURM_JOB_COMMENT": "slurm-vm:1:z:x"}
    env.update(extra)
    return env


def test_context_reads_slurm_environment():
    user = some_user()
    ctx = job_context_from_env(env_for(user.pw_uid))
    assert (ctx.job_id, ctx.uid, ctx.gid, ctx.user) == (42, user.pw_uid, 100, user.pw_name)
    assert ctx.nodes == ("n1", "n2", "n3")
    assert ctx.vm_index == 1
    assert ctx.cluster == "c1"


@pytest.mark.parametrize("bad", [
    {"SLURM_JOB_ID": "12; rm -rf /"}, {"SLURM_JOB_ID": "-1"}, {"SLURM_JOB_ID": "0"}, {"SLURM_JOB_ID": ""},
    {"SLURM_JOB_ID": "99999999999"}, {"SLURM_JOB_UID": "abc"}, {"SLURM_JOB_UID": "0"},
    {"SLURMD_NODENAME": ""}, {"SLURM_JOB_NODELIST": "n[1-"},
])
def test_context_refuses_malformed_environment(bad):
    env = env_for(some_user().pw_uid)
    env.update(bad)
    with pytest.raises(NodeError):
        job_context_from_env(env)


def test_context_refuses_unknown_uid():
    used = {e.pw_uid for e in pwd.getpwall()}
    uid = next(u for u in range(60000, 65000) if u not in used)
    with pytest.raises(NodeError, match="unknown"):
        job_context_from_env(env_for(uid))


def test_journal_records_in_order_and_survives_torn_lines(tmp_path):
    os.mkdir(tmp_path / "journal")
    journal = Journal(str(tmp_path), 7)
    journal.record("job_dir", {"path": "/x/jobs/7"})
    journal.record("tap", {"name": "svm7n0"})
    with open(journal.path, "a") as fh:
        fh.write('{"action": "link", "args": {"name": "svm7n1"}}\n')   # written by slurm-vm 0.1
        fh.write('{"kind": "file", "da')   # a crash mid-write
    assert [(e.kind, e.data) for e in journal.entries()] == [("job_dir", {"path": "/x/jobs/7"}),
                                                             ("tap", {"name": "svm7n0"}),
                                                             ("link", {"name": "svm7n1"})]
    assert oct(os.stat(journal.path).st_mode & 0o777) == "0o600"
    journal.remove()
    journal.remove()
    assert journal.entries() == []


def test_journal_does_not_follow_symlinks(tmp_path):
    os.mkdir(tmp_path / "journal")
    target = tmp_path / "victim"
    target.write_text("keep")
    os.symlink(target, tmp_path / "journal" / "8.jsonl")
    with pytest.raises(OSError):
        Journal(str(tmp_path), 8).record("tap", {"name": "svm8n0"})
    assert target.read_text() == "keep"
