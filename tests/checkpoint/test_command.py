"""`slurm-vm checkpoint`'s pure and local parts: the control socket (real Unix sockets and threads), the save lock
against --drop (real flock, real files), the answers turned into one line, and --list's rows."""

from __future__ import annotations

import json
import os
import threading

import pytest

from slurm_vm.checkpoint import store
from slurm_vm.checkpoint_command import CheckpointFailed, describe_answer, parse_relay_output, relay, row
from slurm_vm.checkpoint.drop import SaveInProgress, drop_job, saving
from slurm_vm.checkpoint.listing import JobCheckpoints
from slurm_vm.errors import SlurmError
from slurm_vm.hypervisor.control_socket import ControlServer, RequestError, ask, parse_request
from slurm_vm.limits import CONTROL_SOCKET
from slurm_vm.slurm import JobInfo

from .test_manifest import UID, save

JOB = JobInfo(job_id=12, name="vm-web", user="alice", state="RUNNING", nodes=("n1",), reason="None", comment="")
SAVED = {"ok": True, "path": "/ck/alice/job-12/ckpt-000001", "size_bytes": 101 << 20, "seconds": 2.31}


@pytest.mark.parametrize("text, error", [
    (b"not json", "not JSON"),
    (b'{"op": "reboot"}', "op one of checkpoint"),
    (b'{"op": "checkpoint", "stop": "yes"}', "unknown argument 'stop' or the wrong type"),
    (b'{"op": "checkpoint", "path": "/etc"}', "unknown argument 'path'"),
])
def test_requests_are_parsed_strictly(text, error):
    with pytest.raises(RequestError, match=error):
        parse_request(text)
    assert parse_request(b'{"op": "checkpoint", "stop": true}').args == {"stop": True}


@pytest.fixture
def server(tmp_path):
    srv = ControlServer(str(tmp_path / CONTROL_SOCKET))
    srv.start()
    yield srv
    srv.stop()
    srv.join(timeout=5)


def main_loop(srv: ControlServer, answer, stop: threading.Event) -> threading.Thread:
    """What the launcher's loop does: take a request now and then and answer it."""
    def loop():
        while not stop.is_set():
            request = srv.take()
            if request is not None:
                answer(request)
            stop.wait(0.05)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_a_request_is_answered_by_the_main_loop_and_the_socket_is_private(server):
    assert os.stat(server.path).st_mode & 0o077 == 0
    stop = threading.Event()
    main_loop(server, lambda r: r.answer(path="/x", stop=r.args["stop"]), stop)
    try:
        assert ask(server.path, {"op": "checkpoint", "stop": True}, 10) == {"ok": True, "path": "/x", "stop": True}
        assert ask(server.path, {"op": "nope"}, 10)["ok"] is False
    finally:
        stop.set()


def test_a_second_request_while_one_is_worked_on_is_told_busy(server):
    release, stop = threading.Event(), threading.Event()
    main_loop(server, lambda r: (release.wait(10), r.answer()), stop)
    first: list[dict] = []
    thread = threading.Thread(target=lambda: first.append(ask(server.path, {"op": "checkpoint"}, 20)))
    thread.start()
    try:
        while server.requests.empty() and not server.busy.locked():
            threading.Event().wait(0.02)
        second = ask(server.path, {"op": "checkpoint"}, 10)
        assert second["ok"] is False and "being worked on" in second["error"]
    finally:
        release.set()
        thread.join(timeout=20)
        stop.set()
    assert first == [{"ok": True}]


def test_requests_left_when_the_vm_ends_are_failed(tmp_path):
    srv = ControlServer(str(tmp_path / CONTROL_SOCKET))
    srv.start()
    answers: list[dict] = []
    thread = threading.Thread(target=lambda: answers.append(ask(srv.path, {"op": "checkpoint"}, 20)))
    thread.start()
    while srv.requests.empty():
        threading.Event().wait(0.02)
    srv.stop()
    thread.join(timeout=20)
    assert answers == [{"ok": False, "error": "the VM is ending"}] and not os.path.exists(srv.path)


def test_relay_prints_the_answer_or_why_there_is_none(tmp_path, capsys):
    assert relay(str(tmp_path), False) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and "not running on this node yet" in out["error"]


def test_drop_is_refused_while_a_save_holds_the_lock_and_works_after(tmp_path):
    root = str(tmp_path)
    save(root, 42)
    with saving(root, 42, UID):
        with pytest.raises(SaveInProgress, match="job 42 is saving a checkpoint right now"):
            drop_job(root, 42, UID)
        assert len(store.checkpoint_dirs(store.job_dir(root, 42))) == 1
    assert [os.path.basename(p) for p in drop_job(root, 42, UID)] == ["ckpt-000001"]
    assert os.listdir(root) == [] and drop_job(root, 42, UID) == []


def test_drop_never_follows_a_symlinked_job_dir(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("x")
    (tmp_path / "ck").mkdir()
    os.symlink(elsewhere, tmp_path / "ck" / "job-5")
    with pytest.raises(Exception, match="not a directory of yours"):
        drop_job(str(tmp_path / "ck"), 5, UID)
    assert (elsewhere / "precious").exists()


def test_a_restore_removes_the_job_dir_with_its_lock(tmp_path):
    path = save(str(tmp_path), 42)
    with saving(str(tmp_path), 42, UID):
        pass
    assert os.path.exists(store.save_lock(store.job_dir(str(tmp_path), 42)))
    store.remove(path)
    assert os.listdir(tmp_path) == []


def test_answers_become_one_line():
    line = describe_answer(JOB, {**SAVED, "paused_seconds": 2.4, "ended": False, "resumed": True})
    assert line == ("checkpoint of VM web (job 12): /ck/alice/job-12/ckpt-000001, 101.0 MiB, saved in 2.3s; "
                    "the guest was paused 2.4s and keeps running")
    held = describe_answer(JOB, {**SAVED, "paused_seconds": 2.3, "ended": True})
    assert "`scontrol release 12` continues it" in held and "`slurm-vm checkpoint --drop 12`" in held
    assert "preempted meanwhile" in describe_answer(JOB, {**SAVED, "ended": True, "because": "preempt"})
    with pytest.raises(CheckpointFailed, match=r"VM web \(job 12\): the save failed \(x\); the guest was resumed"):
        describe_answer(JOB, {"ok": False, "error": "the save failed (x); the guest was resumed and keeps running"})
    with pytest.raises(CheckpointFailed, match="could not be resumed"):
        describe_answer(JOB, {**SAVED, "paused_seconds": 2.3, "ended": False, "resumed": False})


def test_a_relay_that_said_nothing_useful_is_one_line():
    with pytest.raises(SlurmError, match="no answer from the VM's launcher on n1: srun: error: x"):
        parse_relay_output("", "srun: error: x\n", "n1")
    assert parse_relay_output('{"ok": true}', "", "n1") == {"ok": True}


def test_list_rows_say_why_a_checkpoint_is_kept():
    c = JobCheckpoints(job_id=9, count=1, size_bytes=5000, unfinished=0, newest=1.0, image="tiny")
    assert row(c, None)["state"] == "gone" and "ended without restoring" in row(c, None)["kept_because"]
    pending = row(c, JobInfo(job_id=9, name="vm-web", user="alice", state="PENDING", nodes=(), reason="x",
                             comment=""))
    assert pending["restores"] and pending["name"] == "web"
    assert row(JobCheckpoints(9, 0, 0, 1, None, ""), None)["kept_because"] == "unfinished saves only"
